"""Benchmark grids: ``python run_benchmark.py --help`` (see recbole_mm/benchmark/__main__.py)."""
import sys

from recbole_mm.benchmark.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
