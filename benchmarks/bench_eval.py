"""Full-sort evaluation speed per model, with a breakdown of where the time goes (docs/benchmarks/eval.md).

    python benchmarks/bench_eval.py --data_path DATA_ROOT --dataset babyscale \
        --models MuSTRec MMSR MDSRec --threads 2 [--set '{"MDSRec": {"embedding_size": 64}}']

For each model: build it on the training split (untrained weights: the speed of scoring does not
depend on them), then run ``trainer.evaluate`` on the test split ``--repeat`` times and report
users/s of the fastest run. Every part of one evaluation is timed by wrapping it:

- ``loader``: iterating the evaluation DataLoader alone (RecBole's collation of each batch);
- ``predict``: ``model.full_sort_predict`` (graph propagation, sequence encoder, scoring matmul);
- ``history``: building the history-mask indices (``mask_history_items: true``);
- ``mask+topk`` etc.: RecBole's collector (``eval_batch_collect``: top-k, positive matrix) and
  evaluator (metrics from the collected top-k);
- ``other``: the rest (score masking in the trainer, moving tensors).

``--reference`` also times the reference (pre-vectorised) history masking of
``recbole_mm.trainer.reference_history_before`` and checks that both evaluations give identical
metrics. Prints one JSON line per model (with the load average before and after, the threads and
the date) and, with ``--markdown``, a table.
"""
import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL_DEFAULTS = {  # settings of this benchmark (the speed of scoring does not depend on training)
    "MMSR": {"code_reduce": "pca"},  # the codes' fitting method does not change evaluation cost
    "MDSRec": {"embedding_size": 64, "inner_size": 128},
}


class Timer:
    """Accumulates wall and CPU seconds of every call of a wrapped function."""

    def __init__(self):
        self.wall, self.cpu, self.calls = 0.0, 0.0, 0

    def wrap(self, function):
        def timed(*args, **kwargs):
            begin, begin_cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - begin
                self.cpu += time.process_time() - begin_cpu
                self.calls += 1
        return timed


def build(model_name, args, overrides):
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm import registry
    from recbole_mm.config import Config
    from recbole_mm.quick_start import create_dataset

    settings = {"state": "ERROR", "show_progress": False, "log_wandb": False, "mask_history_items": True,
                "checkpoint_dir": os.path.join(args.work_dir, "saved"),
                "graph_cache_dir": os.path.join(args.work_dir, "graph_cache"),
                **MODEL_DEFAULTS.get(model_name, {}), **overrides}
    if args.data_path:
        settings["data_path"] = args.data_path
    config = Config(model_name, args.dataset, config_dict=settings, parse_argv=False)
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = registry.get_model(model_name)(config, train_data.dataset).to(config["device"])
    trainer = registry.get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    return config, model, trainer, train_data, test_data


def time_evaluation(trainer, model, test_data, reference=False):
    """One ``trainer.evaluate`` with its parts timed; returns (result, seconds by part)."""
    timers = {name: Timer() for name in ("predict", "history", "collect", "evaluator")}
    dataset = test_data._dataset
    originals = {
        "predict": (model, "full_sort_predict"),
        "collect": (trainer.eval_collector, "eval_batch_collect"),
        "evaluator": (trainer.evaluator, "evaluate"),
    }
    saved = {name: getattr(owner, attr) for name, (owner, attr) in originals.items()}
    for name, (owner, attr) in originals.items():
        setattr(owner, attr, timers[name].wrap(saved[name]))
    from recbole_mm.data.dataset import MultimodalSequentialDataset as history_owner
    history_attr = "history_before"
    saved_history = vars(history_owner)[history_attr]
    replacement = getattr(history_owner, "reference_history_before", saved_history) if reference else saved_history
    setattr(history_owner, history_attr, timers["history"].wrap(replacement))
    try:
        begin, begin_cpu = time.perf_counter(), time.process_time()
        result = trainer.evaluate(test_data, load_best_model=False)
        total, total_cpu = time.perf_counter() - begin, time.process_time() - begin_cpu
    finally:
        for name, (owner, attr) in originals.items():
            if attr in vars(owner):
                delattr(owner, attr) if not isinstance(owner, type) else setattr(owner, attr, saved[name])
        setattr(history_owner, history_attr, saved_history)
    begin = time.perf_counter()
    for _ in test_data:  # collation alone
        pass
    loader = time.perf_counter() - begin
    parts = {name: round(timer.wall, 3) for name, timer in timers.items()}
    parts["loader"] = round(loader, 3)
    parts["other"] = round(total - sum(timer.wall for timer in timers.values()) - loader, 3)
    return result, {"total_s": round(total, 3), "total_cpu_s": round(total_cpu, 3), "parts_s": parts,
                    "users": len(dataset), "users_per_s": round(len(dataset) / total, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=None, help="RecBole data root (not needed for ml-100k)")
    parser.add_argument("--dataset", default="babyscale")
    parser.add_argument("--models", nargs="+", default=["MuSTRec", "MMSR", "MDSRec"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="evaluations per model; the fastest is reported")
    parser.add_argument("--set", default="{}", help='JSON {model: {key: value}} or {key: value} for all models')
    parser.add_argument("--reference", action="store_true",
                        help="also time the reference history masking and check the metrics are identical")
    parser.add_argument("--work_dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_eval"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.set)
    rows = []
    for model_name in args.models:
        per_model = overrides.get(model_name, {}) if any(isinstance(v, dict) and k in args.models
                                                          for k, v in overrides.items()) else overrides
        load_before = os.getloadavg()
        config, model, trainer, _, test_data = build(model_name, args, per_model)
        runs = [time_evaluation(trainer, model, test_data) for _ in range(args.repeat)]
        result, timing = min(runs, key=lambda run: run[1]["total_s"])
        record = {"model": model_name, "dataset": args.dataset, "threads": args.threads,
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "settings": {**MODEL_DEFAULTS.get(model_name, {}), **per_model}, **timing,
                  "all_totals_s": [run[1]["total_s"] for run in runs],
                  "metrics": {key: round(float(value), 4) for key, value in result.items()}}
        if args.reference:
            ref_result, ref_timing = time_evaluation(trainer, model, test_data, reference=True)
            record["reference"] = ref_timing
            record["identical_metrics"] = dict(ref_result) == dict(result)
        record["loadavg_before"], record["loadavg_after"] = load_before, os.getloadavg()
        rows.append(record)
        print(json.dumps(record), flush=True)
    if args.markdown:
        print("| model | users | users/s | total s | " + " | ".join(rows[0]["parts_s"]) + " | load before/after |")
        print("|---|---|---|---|" + "---|" * len(rows[0]["parts_s"]) + "---|")
        for row in rows:
            parts = " | ".join(f"{value:.2f}" for value in row["parts_s"].values())
            print(f"| {row['model']} | {row['users']} | {row['users_per_s']:,.0f} | {row['total_s']:.2f} | {parts} | "
                  f"{row['loadavg_before'][0]:.1f} / {row['loadavg_after'][0]:.1f} |")


if __name__ == "__main__":
    main()
