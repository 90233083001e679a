"""Train and evaluate a model: ``python run_recbole_mm.py --model=MuSTRec --dataset=ml-100k``.

The same as ``python -m recbole_mm`` and the ``recbole-mm`` command (see ``recbole_mm/cli.py``).
"""
import sys

from recbole_mm.cli import DEFAULT_DATASET, DEFAULT_MODEL, main_run as main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
