"""Benchmark grids: every (model, dataset, seed) cell under one protocol, tuned on validation
with the same budget for every model, stored as JSON lines and turned into tables and figures.

* :mod:`~recbole_mm.benchmark.grid`: the grid file (protocol, datasets, seeds, entries, search
  spaces) and the cells it expands to;
* :mod:`~recbole_mm.benchmark.store`: the append-only JSONL of finished cells (resume, skip);
* :mod:`~recbole_mm.benchmark.cell`: one cell in its own process, through ``run_recbole_mm``;
* :mod:`~recbole_mm.benchmark.runner`: the scheduler (local processes or Ray), progress, ETA;
* :mod:`~recbole_mm.benchmark.metrics`: per-user metrics from target ranks, significance tests;
* :mod:`~recbole_mm.benchmark.report`: Markdown/LaTeX tables, figures, ``docs/results.md``.

Command line: ``python run_benchmark.py --help`` (or ``python -m recbole_mm.benchmark``).
"""
