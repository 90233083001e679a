"""Small CPU result runs for docs/results/mmsr.md: MMSR variants beside SASRec on one dataset.

    python benchmarks/bench_mmsr_results.py --dataset scientific --data_path DATA \
        # SCRATCH: any scratch folder
        --runs MMSR SASRec MMSR:han_mode=ho --out SCRATCH/mmsr_results.jsonl

``DATA`` is the folder holding ``scientific/`` (docs/datasets.md); ml-100k needs none.
A run is ``MODEL[:key=value,...]`` (values parsed as yaml). Every run uses the project protocol of
properties/overall.yaml (leave-one-out, full ranking, validation-selected checkpoint) plus the
small setting given by ``--common`` (default: d 64, max length 20, batch 512, <= 20 epochs,
patience 3). One JSON line per run is appended to ``--out``.
"""
import argparse
import json
import sys
import time

import torch
import yaml

from common import add_data_args, append_record, data_overrides, run_entry_point, scratch_dir  # first: this checkout
from recbole_mm.quick_start import run_recbole_mm

COMMON = ("embedding_size=64,hidden_size=64,inner_size=128,n_layers=1,MAX_ITEM_LIST_LENGTH=20,"
          "train_batch_size=512,eval_batch_size=2048,epochs=20,stopping_step=3")


def parse(spec):
    out = {}
    for part in filter(None, spec.split(",")):
        key, value = part.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def print_table(files):
    metrics = ["hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20", "mrr@20"]
    print("| dataset | run | " + " | ".join(metrics) + " | valid ndcg@20 | time (s) |")
    print("|---|---|" + "---|" * (len(metrics) + 2))
    for name in files:
        with open(name) as handle:
            for line in handle:
                r = json.loads(line)
                cells = " | ".join(f"{r['test'][m]:.4f}" for m in metrics)
                print(f"| {r['dataset']} | {r['run']} | {cells} | {r['valid']['ndcg@20']:.4f} | {r['seconds']:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, dataset="ml-100k")
    parser.add_argument("--runs", nargs="+", default=["MMSR", "SASRec"])
    parser.add_argument("--common", default=COMMON)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="mmsr_results.jsonl")
    parser.add_argument("--table", nargs="*", help="print a markdown table of these jsonl files and exit")
    args = parser.parse_args()
    if args.table:
        print_table(args.table)
        return
    data = data_overrides(args)
    torch.set_num_threads(args.threads)
    for run in args.runs:
        model, _, extra = run.partition(":")
        config = parse(args.common)
        config.update(parse(extra))
        config.update(show_progress=False, state="INFO", checkpoint_dir=scratch_dir("mmsr_results_saved"), **data)
        start = time.time()
        result = run_recbole_mm(model=model, dataset=args.dataset, config_dict=config, saved=True)
        record = {"run": run, "dataset": args.dataset, "seconds": round(time.time() - start, 1),
                  "valid": dict(result["best_valid_result"]), "test": dict(result["test_result"]),
                  "config": {k: v for k, v in config.items() if k not in ("show_progress", "state")}}
        append_record(args.out, record)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
