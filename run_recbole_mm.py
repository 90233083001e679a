"""Train and evaluate a model: ``python run_recbole_mm.py --model=MuSTRec --dataset=ml-100k``.

Any RecBole key can be set as ``--key=value``; ``--config_files="a.yaml b.yaml"`` adds yaml
files (repeat the flag, or give a yaml list ``--config_files="['my dir/a.yaml']"``, for paths with
spaces). recbole_mm models are looked up first, then RecBole's own (SASRec, BERT4Rec, ...).
A misspelt key is an error (``--allow_unknown_keys=True`` accepts extra keys on purpose).
``--resume=PATH`` continues a killed run from the checkpoint path it printed.
"""
import argparse
import sys

DEFAULT_MODEL = "MuSTRec"
DEFAULT_DATASET = "ml-100k"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=None, help=f"model name (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", "-d", default=DEFAULT_DATASET, help="dataset name (default ml-100k)")
    parser.add_argument("--config_files", action="append", default=None,
                        help="yaml files: space-separated, a yaml list, or the flag repeated")
    parser.add_argument("--nproc", type=int, default=1, help="processes for distributed training")
    args, extra = parser.parse_known_args(argv)

    from recbole_mm.cli import run_cli

    return run_cli(args, default_model=DEFAULT_MODEL, extra=extra)


if __name__ == "__main__":
    sys.exit(main())
