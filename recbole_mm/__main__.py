"""``python -m recbole_mm [--model=...] [--dataset=...] [--key=value ...]``: the main job, the
same as ``run_recbole_mm.py`` and the ``recbole-mm`` command."""
import sys

from recbole_mm.cli import main_run

if __name__ == "__main__":
    sys.exit(main_run())
