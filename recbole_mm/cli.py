"""The command-line entry points and their shared plumbing: user errors
(:class:`recbole_mm.errors.RecBoleMMError`) become one line on stderr and exit code 2, never a
traceback.

``main_run``: ``python -m recbole_mm``, ``recbole-mm`` and ``run_recbole_mm.py``;
``main_hyper``: ``recbole-mm-hyper`` and ``run_hyper.py``.
"""
import argparse
import os
import shlex
import sys
import warnings

from recbole_mm.errors import ConfigError, report, run_entry_point

# Known, harmless warnings of the pinned stack (RecBole 1.2.1 on pandas 2.x / torch 2.13 / ray 2.6)
# that would bury our own messages. Set by the command-line entry points only, never on import:
# a program that imports recbole_mm keeps its own warning filters.
KNOWN_WARNINGS = (
    dict(category=FutureWarning, module=r"recbole\."),
    dict(category=FutureWarning, message=r".*torch\.cuda\.amp\.GradScaler.*"),
    dict(category=DeprecationWarning, module=r"(thop|ray|hyperopt|pkg_resources)"),
    dict(category=UserWarning, message=r".*pkg_resources is deprecated.*"),
)


def silence_known_warnings():
    for spec in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", **spec)


def fail(message):
    """Print one ``error:`` line; returns exit code 2."""
    return report(message)


def config_file_list(values):
    """``--config_files`` values → list of paths.

    Each value (the flag may be repeated) is a yaml list (``"[a.yaml, 'my dir/b.yaml']"``), the path
    of an existing file (spaces allowed), or RecBole's space-separated form (``"a.yaml b.yaml"``,
    shell quoting understood: ``"'my dir/a.yaml' b.yaml"``).
    """
    import yaml

    paths = []
    for value in values or []:
        value = value.strip()
        if not value:
            continue
        if value.startswith("["):
            try:
                listed = yaml.safe_load(value)
            except yaml.YAMLError:
                listed = None
            if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
                raise ConfigError(f"--config_files={value} is not a yaml list of file names. "
                                  "Fix: --config_files=\"[a.yaml, 'my dir/b.yaml']\".")
            paths += listed
        elif os.path.isfile(value):
            paths.append(value)
        else:
            try:
                paths += shlex.split(value)
            except ValueError:  # unbalanced quotes: RecBole's plain split
                paths += value.split()
    return paths or None


def format_results(result):
    """Valid and test HR/NDCG/MRR at every cut-off as a small text table."""
    rows = []
    keys = [k for k in (result.get("test_result") or {}) if "@" in k]
    header = f"{'metric':<12}{'valid':>10}{'test':>10}"
    rows.append(header)
    for key in keys:
        valid = (result.get("best_valid_result") or {}).get(key, float("nan"))
        rows.append(f"{key:<12}{valid:>10.4f}{result['test_result'][key]:>10.4f}")
    return "\n".join(rows)


def _default_model(name):
    from recbole_mm import registry

    try:
        registry.get_model(name)
        return name
    except registry.UnknownNameError:
        return "SASRec"


def run_cli(args, default_model, extra=()):
    """The runner's work after argument parsing (``extra``: the arguments argparse left, config
    values ``--key=value``); returns the exit code."""
    silence_known_warnings()
    return run_entry_point(_run, args, default_model, extra)


def check_config_arguments(extra):
    """Config values come as ``--key=value``; ``--epochs 5`` would be dropped silently by RecBole."""
    for arg in extra:
        if not (arg.startswith("--") and "=" in arg):
            raise ConfigError(f"argument '{arg}' is not understood: config values are passed as --key=value "
                              "(e.g. --epochs=5).")


def _run(args, default_model, extra):
    check_config_arguments(extra)
    model = args.model or _default_model(default_model)
    config_files = config_file_list(args.config_files)
    if args.model is None:  # the main job: a small budget on top of the model's defaults
        from recbole_mm.config import PROPERTIES_DIR

        config_files = [os.path.join(PROPERTIES_DIR, "default_job.yaml")] + (config_files or [])
    if args.nproc > 1:
        from recbole_mm.launcher import run_distributed

        result = run_distributed(model, args.dataset, config_files, args.nproc, parse_argv=True)
    else:
        from recbole_mm.quick_start import run_recbole_mm

        result = run_recbole_mm(model=model, dataset=args.dataset, config_file_list=config_files,
                                parse_argv=True)
    if result and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 reports
        print(f"\n{model} on {args.dataset}\n" + format_results(result))
        if result.get("checkpoint"):
            print(f"checkpoint: {result['checkpoint']}")
    sys.stdout.flush()
    return 0


RUN_HELP = """Train and evaluate a model: ``python -m recbole_mm --model=MuSTRec --dataset=ml-100k``
(the same as ``recbole-mm ...`` and ``python run_recbole_mm.py ...``).

Any RecBole key can be set as ``--key=value``; ``--config_files="a.yaml b.yaml"`` adds yaml
files (repeat the flag, or give a yaml list ``--config_files="['my dir/a.yaml']"``, for paths with
spaces). recbole_mm models are looked up first, then RecBole's own (SASRec, BERT4Rec, ...).
A misspelt key is an error (``--allow_unknown_keys=True`` accepts extra keys on purpose).
``--resume=PATH`` continues a killed run from the checkpoint path it printed.
Without --model it runs the main job: MuSTRec on the embedded ml-100k with a small budget.
"""
DEFAULT_MODEL = "MuSTRec"
DEFAULT_DATASET = "ml-100k"


def _prog():
    name = os.path.basename(sys.argv[0])
    return "python -m recbole_mm" if name == "__main__.py" else name


def main_run(argv=None):
    parser = argparse.ArgumentParser(prog=_prog(), description=RUN_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=None, help=f"model name (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", "-d", default=DEFAULT_DATASET, help="dataset name (default ml-100k)")
    parser.add_argument("--config_files", action="append", default=None,
                        help="yaml files: space-separated, a yaml list, or the flag repeated")
    parser.add_argument("--nproc", type=int, default=1, help="processes for distributed training")
    args, extra = parser.parse_known_args(argv)
    return run_cli(args, default_model=DEFAULT_MODEL, extra=extra)


HYPER_HELP = """Hyper-parameter search over a RecBole ``.hyper`` space, for recbole_mm's models and RecBole's
(``recbole-mm-hyper ...`` is the same as ``python run_hyper.py ...``).

    recbole-mm-hyper --model=SASRec --dataset=ml-100k --params_file=properties/hyper/sasrec.hyper \\
        --tool=hyperopt --algo=tpe --max_evals=20
    recbole-mm-hyper --model=MuSTRec --params_file=properties/hyper/mustrec.hyper \\
        --tool=ray --algo=random --max_evals=16 --cpus_per_trial=2 --gpus_per_trial=0.5 [--ray_address=auto]

``--params_file`` may also name a search space shipped with the package (``mustrec.hyper``,
``sasrec.hyper``, ...: the files of ``recbole_mm/properties/hyper/``) when no such file exists.
Trials are ranked on the validation metric (``valid_metric``); test metrics are only reported.
Every other ``--key=value`` is a fixed config value for all trials (as in run_recbole_mm.py),
``--config_files="a.yaml b.yaml"`` adds yaml files (or repeat the flag). Every key, fixed or
searched, must be a known config key: a misspelt one stops the search before the first trial.
Results go to ``--output_file`` (JSON, default
``hyper_results/<model>-<dataset>-<tool>-<time>.json``) and a Markdown table next to it (``.md``),
which is also printed. Exit code 2 on a bad search space or config, 1 when every trial failed.
"""


def parse_fixed(extra):
    """``--key=value`` pairs (values read as yaml: numbers, lists, booleans) → dict."""
    import yaml

    fixed, unknown = {}, []
    for arg in extra:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            try:
                fixed[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                fixed[key] = value
        else:
            unknown.append(arg)
    return fixed, unknown


def _params_file(path):
    """``path`` as given, else the packaged search space of that name (works from any folder)."""
    if os.path.isfile(path):
        return path
    from recbole_mm.config import PROPERTIES_DIR

    packaged = os.path.join(PROPERTIES_DIR, "hyper", os.path.basename(path))
    return packaged if os.path.isfile(packaged) else path


def main_hyper(argv=None):
    parser = argparse.ArgumentParser(prog=_prog(), description=HYPER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="SASRec", help="model name (ours or RecBole's; default SASRec)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default ml-100k)")
    parser.add_argument("--config_files", action="append", default=None,
                        help="yaml files fixed for every trial: space-separated, a yaml list, or the flag repeated")
    parser.add_argument("--params_file", required=True, help="search space in RecBole's .hyper format")
    parser.add_argument("--tool", default="hyperopt", type=str.lower, choices=["hyperopt", "ray"])
    parser.add_argument("--algo", default="tpe", type=str.lower,
                        choices=["exhaustive", "grid", "random", "tpe", "bayes"],
                        help="exhaustive (= grid, choice parameters only), random, tpe (= bayes)")
    parser.add_argument("--max_evals", type=int, default=None,
                        help="number of trials (default 10; exhaustive: the whole grid)")
    parser.add_argument("--output_file", "--output", default=None, help="results JSON (table: same name, .md)")
    parser.add_argument("--ray_address", default=None,
                        help="attach to a running Ray cluster ('auto' or HOST:PORT); default: start a local one")
    parser.add_argument("--max_concurrent", type=int, default=None, help="Ray: most trials running at once")
    parser.add_argument("--early_stop", type=int, default=None,
                        help="hyperopt: stop after this many trials without a better valid score")
    parser.add_argument("--verbose", type=int, default=0, help="Ray Tune verbosity 0-3 (default 0)")
    args, extra = parser.parse_known_args(argv)
    fixed, unknown = parse_fixed(extra)
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; config values are passed as --key=value")

    from recbole_mm.errors import RecBoleMMError
    from recbole_mm.tuning import AllTrialsFailed, format_table, run_search

    silence_known_warnings()
    try:
        summary = run_search(args.model, args.dataset, _params_file(args.params_file),
                             config_file_list=config_file_list(args.config_files),
                             config_dict=fixed, tool=args.tool, algo=args.algo, max_evals=args.max_evals,
                             output_file=args.output_file, ray_address=args.ray_address,
                             max_concurrent=args.max_concurrent, early_stop=args.early_stop, verbose=args.verbose)
    except RecBoleMMError as err:
        return fail(err)
    except AllTrialsFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\n{summary['model']} on {summary['dataset']}, {summary['tool']} / {summary['algo']}, "
          f"{summary['n_trials']} trials ({summary['n_failed']} failed)\n")
    print(format_table(summary))
    print(f"\nresults: {summary['output_file']}\ntable:   {summary['table_file']}")
    return 0
