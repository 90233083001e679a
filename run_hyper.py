"""Hyper-parameter search: ``python run_hyper.py --model=SASRec --params_file=properties/hyper/sasrec.hyper``.

The same as the ``recbole-mm-hyper`` command (see ``recbole_mm/cli.py`` or ``--help``).
"""
import sys

from recbole_mm.cli import main_hyper as main, parse_fixed  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
