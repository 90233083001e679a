"""Command-line plumbing shared by ``run_recbole_mm.py`` and ``run_hyper.py``: user errors
(:class:`recbole_mm.errors.RecBoleMMError`) become one line on stderr and exit code 2, never a
traceback."""
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

