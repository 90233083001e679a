"""Hyper-parameter search for recbole_mm and RecBole models with hyperopt or Ray Tune.

The search space uses RecBole's ``.hyper`` format, one parameter a line (see
:mod:`recbole_mm.tuning_common`), e.g. ``learning_rate loguniform -8,0``.

Every trial is one ``recbole_mm.quick_start.objective_function`` run (train, select the best
epoch on the validation split, evaluate it on test). Trials are ranked on the **validation**
score (``valid_metric``); test metrics are recorded but never used for selection.

Why not RecBole's ``HyperTuning`` / ``run_hyper.py --tool Ray`` as is (docs/scaling.md, "Why not
RecBole's own tuning"): its Ray path asks one GPU per trial and waits
for ever on a CPU machine, its objective reports test metrics, parses the Ray worker's argv into
the config and fails on torch>=2.6 checkpoint loading. Here trials build
``Config(parse_argv=False)`` with absolute paths (Ray runs a trial inside its own folder), request
``cpus_per_trial`` / ``gpus_per_trial`` from the config, and report validation metrics.
The Ray Tune driver is in :mod:`recbole_mm.tuning_ray`; :func:`run_search` runs either. The search
space and the trial both drivers share live in :mod:`recbole_mm.tuning_common`.
"""
import json
import os
import time

from recbole_mm.tuning_common import (  # noqa: F401  (re-exported: the search space API lives here too)
    KINDS, Param, SearchSpaceError, TrialSetup, TuningError, clean_params, grid_size, hyperopt_space,
    parse_search_space, run_trial)

ALGOS = {"exhaustive": "exhaustive", "grid": "exhaustive", "random": "random", "tpe": "tpe", "bayes": "tpe"}
# Config keys holding paths: made absolute in the driver so trials find them from any folder.
PATH_KEYS = ("data_path", "mm_feature_path", "graph_cache_dir", "checkpoint_dir", "dataset_save_path",
             "dataloaders_save_path")


class AllTrialsFailed(RuntimeError):
    """Every trial raised; the results file still lists each error."""


def prepare_setup(model, dataset, config_file_list=None, config_dict=None, output_dir="hyper_results",
                  saved=True):
    """Validate the fixed configuration once in the driver and pin every path to an absolute one.

    Returns ``(setup, config)``; ``config`` is the driver's ``Config`` (valid metric, resources)."""
    from recbole_mm.config import Config
    from recbole_mm.data.dataset import default_graph_cache_dir

    config_file_list = [os.path.abspath(f) for f in config_file_list or []]
    config_dict = dict(config_dict or {})
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, parse_argv=False)
    for key in PATH_KEYS:
        given = config.external_config_dict.get(key)
        if isinstance(given, str):
            config_dict[key] = os.path.abspath(given)
    # Defaults derived from the working directory ('dataset/'): pin them too.
    config_dict.setdefault("data_path", os.path.abspath(config["mm_data_root"]))
    config_dict.setdefault("checkpoint_dir", os.path.join(os.path.abspath(output_dir), "checkpoints"))
    if isinstance(config["mm_feature_path"], str):
        config_dict["mm_feature_path"] = os.path.abspath(config["mm_feature_path"])
    # every trial has its own checkpoint folder: pin the graph caches to one folder they share
    if not config["graph_cache_dir"]:
        config_dict["graph_cache_dir"] = default_graph_cache_dir(
            config_dict.get("mm_feature_path"), config_dict["checkpoint_dir"], config["dataset"])
    if "save_last_state" not in config.external_config_dict:
        config_dict["save_last_state"] = False  # a failed trial is rerun, not resumed
    setup = TrialSetup(model=config["model"], dataset=config["dataset"], config_file_list=config_file_list,
                       config_dict=config_dict, output_dir=os.path.abspath(output_dir), saved=saved)
    return setup, config


# ------------------------------------------------------------------ drivers
def run_hyperopt(setup, params, algo="tpe", max_evals=10, bigger=True, seed=2020, early_stop=None):
    """Sequential search with hyperopt in this process; returns the list of trial records."""
    import numpy as np
    from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, rand, tpe
    from recbole.trainer.hyper_tuning import exhaustive_search

    records = []

    def objective(sampled):
        record = run_trial(setup, clean_params(params, sampled), trial_id=len(records))
        records.append(record)
        if record["status"] != "ok":
            return {"status": STATUS_FAIL}
        return {"status": STATUS_OK, "loss": -record["valid_score"] if bigger else record["valid_score"]}

    if algo == "exhaustive":
        max_evals = grid_size(params)
        suggest = exhaustive_search
    else:
        suggest = rand.suggest if algo == "random" else tpe.suggest
    kwargs = {}
    if early_stop:
        from hyperopt.early_stop import no_progress_loss

        kwargs["early_stop_fn"] = no_progress_loss(early_stop)
    import hyperopt

    new_rng = tuple(int(x) for x in hyperopt.__version__.split(".")[:3]) >= (0, 2, 7)
    rstate = np.random.default_rng(seed) if new_rng else np.random.RandomState(seed)
    from hyperopt.exceptions import AllTrialsFailed as HyperoptAllFailed

    try:
        fmin(objective, hyperopt_space(params), algo=suggest, max_evals=max_evals, trials=Trials(),
             rstate=rstate, show_progressbar=False, return_argmin=False, **kwargs)
    except HyperoptAllFailed:
        pass  # the records hold each error; run_search reports it
    return records


# ------------------------------------------------------------------ results
def best_record(records, bigger=True):
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None
    return (max if bigger else min)(ok, key=lambda r: r["valid_score"])


def summarize(records, setup, config, tool, algo, params_file):
    bigger = bool(config["valid_metric_bigger"])
    best = best_record(records, bigger)
    return {
        "model": setup.model, "dataset": setup.dataset, "tool": tool, "algo": algo,
        "params_file": os.path.abspath(params_file), "config_files": setup.config_file_list,
        "valid_metric": config["valid_metric"].lower(), "mode": "max" if bigger else "min",
        "n_trials": len(records), "n_failed": sum(r["status"] != "ok" for r in records),
        "best": None if best is None else {k: best[k] for k in ("trial", "params", "valid_score", "valid", "test")},
        "trials": records,
    }


def format_table(summary):
    """Markdown table of every trial (validation score used for selection, test for reference)
    followed by the best trial's full valid/test metrics."""
    metric = summary["valid_metric"]
    names = sorted({k for r in summary["trials"] for k in r["params"]})
    best_trial = summary["best"]["trial"] if summary["best"] else None
    header = ["trial"] + names + [f"valid {metric}", f"test {metric}", "seconds", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary["trials"]:
        values = [_fmt(r["params"].get(n)) for n in names]
        ok = r["status"] == "ok"
        mark = " *" if r["trial"] == best_trial else ""
        lines.append("| " + " | ".join([f"{r['trial']}{mark}"] + values + [
            _fmt(r.get("valid_score")) if ok else "-", _fmt(r["test"].get(metric)) if ok else "-",
            _fmt(r.get("seconds")), "ok" if ok else f"failed: {r['error']}"]) + " |")
    lines.append("")
    if summary["best"]:
        best = summary["best"]
        lines.append(f"best trial (*) on valid {metric}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items()))
        lines.append("")
        lines.append("| metric | valid | test |")
        lines.append("|---|---|---|")
        for key in best["test"]:
            lines.append(f"| {key} | {_fmt(best['valid'].get(key))} | {_fmt(best['test'][key])} |")
    else:
        lines.append("every trial failed; see the status column.")
    return "\n".join(lines)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    return "" if value is None else str(value)


def write_results(summary, output_file):
    """Write ``output_file`` (JSON) and the same name with ``.md`` (the table)."""
    folder = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(folder, exist_ok=True)
    with open(output_file, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, default=str)
    table_file = os.path.splitext(os.path.abspath(output_file))[0] + ".md"
    with open(table_file, "w", encoding="utf-8") as handle:
        handle.write(f"# {summary['model']} on {summary['dataset']}: {summary['tool']} / {summary['algo']}\n\n")
        handle.write(format_table(summary) + "\n")
    return table_file


def run_search(model, dataset, params_file, config_file_list=None, config_dict=None, tool="hyperopt", algo="tpe",
               max_evals=None, output_file=None, ray_address=None, max_concurrent=None, early_stop=None, verbose=0):
    """Run a search and write the results; returns the summary dict (see :func:`summarize`).

    Trial resources come from the config keys ``cpus_per_trial`` (default 1) and
    ``gpus_per_trial`` (default 1 when CUDA is usable, else 0); they matter for ``tool='ray'``.
    """
    tool = tool.lower()
    if tool not in ("hyperopt", "ray"):
        raise TuningError(f"unknown --tool '{tool}'. Fix: use hyperopt or ray.")
    if algo.lower() not in ALGOS:
        raise TuningError(f"unknown --algo '{algo}'. Fix: use one of {', '.join(ALGOS)}.")
    algo = ALGOS[algo.lower()]
    params = parse_search_space(params_file)
    if algo == "exhaustive":  # the whole grid, in both tools
        if max_evals and max_evals < grid_size(params):
            raise SearchSpaceError(f"the grid of {params_file} has {grid_size(params)} points but --max_evals is "
                                   f"{max_evals}. Fix: drop --max_evals or use --algo random.")
        max_evals = grid_size(params)
    max_evals = max_evals or 10
    output_file = output_file or os.path.join(
        "hyper_results", f"{model}-{dataset}-{tool}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    output_dir = os.path.splitext(os.path.abspath(output_file))[0]
    setup, config = prepare_setup(model, dataset, config_file_list, config_dict, output_dir=output_dir)
    config.check_keys([p.name for p in params], where=params_file)  # a misspelt name would vary nothing
    bigger = bool(config["valid_metric_bigger"])
    seed = config["seed"]
    if tool == "hyperopt":
        records = run_hyperopt(setup, params, algo, max_evals, bigger, seed, early_stop)
    else:
        import torch

        cpus = config["cpus_per_trial"] if config["cpus_per_trial"] is not None else 1
        gpus = config["gpus_per_trial"]
        if gpus is None:
            gpus = 1 if (torch.cuda.is_available() and config["use_gpu"]) else 0
        from recbole_mm.tuning_ray import run_ray

        records = run_ray(setup, params, algo, max_evals, bigger, seed, cpus, gpus, ray_address, max_concurrent,
                          verbose)
    summary = summarize(records, setup, config, tool, algo, params_file)
    summary["table_file"] = write_results(summary, output_file)
    summary["output_file"] = os.path.abspath(output_file)
    if summary["best"] is None:
        first = records[0]["error"] if records else "no trial ran"
        raise AllTrialsFailed(f"every trial failed (results in {output_file}); first error: {first}")
    return summary
