"""Command-line plumbing shared by ``run_recbole_mm.py`` and ``run_hyper.py``: known errors
become one line on stderr and exit code 2, never a traceback."""
import os
import sys

from recbole_mm import registry
from recbole_mm.config import ConfigError
from recbole_mm.data.dataset import DatasetError
from recbole_mm.data.features import FeatureFileError

USER_ERRORS = (registry.UnknownNameError, ConfigError, DatasetError, FeatureFileError)


def user_errors():
    from recbole_mm.distributed import DistributedError
    from recbole_mm.quick_start import DatasetNotFoundError

    return USER_ERRORS + (DatasetNotFoundError, DistributedError)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    return 2


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
    try:
        registry.get_model(name)
        return name
    except registry.UnknownNameError:
        return "SASRec"


def run_cli(args, default_model):
    model = args.model or _default_model(default_model)
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    if args.model is None:  # the main job: a small budget on top of the model's defaults
        from recbole_mm.config import PROPERTIES_DIR

        config_files = [os.path.join(PROPERTIES_DIR, "default_job.yaml")] + (config_files or [])
    try:
        if args.nproc > 1:
            from recbole_mm.distributed import run_distributed

            result = run_distributed(model, args.dataset, config_files, args.nproc, parse_argv=True)
        else:
            from recbole_mm.quick_start import run_recbole_mm

            result = run_recbole_mm(model=model, dataset=args.dataset, config_file_list=config_files,
                                    parse_argv=True)
    except user_errors() as err:
        return fail(err)
    if result and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 reports
        print(f"\n{model} on {args.dataset}\n" + format_results(result))
    return 0
