"""What the benchmark scripts share: the repository's recbole_mm on ``sys.path``, the dataset
arguments and their check, scratch folders, and JSON-lines output.

Scripts run as ``python benchmarks/<script>.py ...`` (Python puts ``benchmarks/`` first on
``sys.path``, so ``import common`` finds this file) and end with
``sys.exit(run_entry_point(main))``: a bad argument or config is one ``error:`` line, exit code 2.

Datasets: ``--data_path`` is the folder that holds ``<dataset>/`` (docs/datasets.md says how to
get or make one, the ``scientific`` set and Baby-scale synthetic sets included). Only ``ml-100k``,
which RecBole ships, runs without it.
"""
import json
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # this checkout's recbole_mm, also when another copy is installed

from recbole_mm.errors import MissingFileError, run_entry_point  # noqa: E402

__all__ = ["REPO", "add_data_args", "add_run_args", "data_root", "data_overrides", "scratch_dir", "append_record", "run_entry_point"]

BUNDLED_DATASETS = ("ml-100k",)  # shipped with RecBole: no --data_path needed


def add_data_args(parser, dataset="scientific", choices=None):
    """``--dataset`` (default ``dataset``) and ``--data_path`` (the folder holding it)."""
    parser.add_argument("--dataset", default=dataset, choices=choices)
    parser.add_argument("--data_path", default=None,
                        help="folder holding <dataset>/ (see docs/datasets.md); not needed for ml-100k")


def add_run_args(parser, threads=1):
    """``--threads`` (torch threads) and ``--set`` (a JSON dict of config overrides for every run)."""
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--set", default="{}", help="JSON dict of config overrides")


def data_root(data_path, dataset):
    """The absolute data root for ``dataset``, or None for a dataset RecBole ships and no
    ``--data_path``. A missing ``--data_path``, or one without ``<dataset>/`` in it, raises
    :class:`MissingFileError` (one ``error:`` line through ``run_entry_point``)."""
    if data_path is None:
        if dataset in BUNDLED_DATASETS:
            return None
        raise MissingFileError(f"--data_path is required for dataset '{dataset}': pass the folder that holds "
                               f"{dataset}/ (docs/datasets.md says how to get or make it).")
    root = os.path.abspath(data_path)
    if not os.path.isdir(os.path.join(root, dataset)):
        raise MissingFileError(f"--data_path {data_path}: no folder {dataset}/ in it; pass the folder that "
                               f"holds {dataset}/ (docs/datasets.md).")
    return root


def data_overrides(args, dataset=None):
    """``{"data_path": root}`` for ``args.data_path`` and ``dataset`` (default ``args.dataset``),
    or ``{}`` for a bundled dataset without ``--data_path``; see :func:`data_root`."""
    root = data_root(args.data_path, dataset or args.dataset)
    return {"data_path": root} if root else {}


def scratch_dir(name):
    """``<system temp folder>/<name>``: checkpoints and caches a benchmark may throw away."""
    return os.path.join(tempfile.gettempdir(), name)


def append_record(path, record, indent=None):
    """Append ``record`` as one JSON line to ``path`` and print it (``indent`` for the print)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=float) + "\n")
    print(json.dumps(record, indent=indent, default=float), flush=True)
