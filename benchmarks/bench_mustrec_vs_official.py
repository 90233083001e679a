"""MuSTRec against the official code: same data, same epochs, one core each (docs/benchmarks/mustrec.md).

    # ours: train --epochs epochs (paper defaults), record each epoch's training and validation time
    # SCRATCH: any scratch folder
    python benchmarks/bench_mustrec_vs_official.py ours --data_path SCRATCH/mustrec/data \
        --dataset babyscale --epochs 6 --out SCRATCH/mustrec/ours.json
    # the official run writes src/log/MuSTRec-baby-<time>.log; put the two side by side
    python benchmarks/bench_mustrec_vs_official.py compare --ours SCRATCH/mustrec/ours.json \
        --official OFFICIAL/src/log/MuSTRec-baby-<time>.log

How the official code was made to run on CPU / Python 3.11 is in docs/benchmarks/mustrec.md; its
patches live outside this project. ``compare`` reads the official log's per-epoch lines
("epoch N training [time: X s", "epoch N evaluating [time: Y s" and the sequential-head metric
dicts printed for validation then test) and selects the official test result at the epoch with
the best validation HR@20, as the official trainer does.
"""
import argparse
import ast
import json
import logging
import re
import statistics
import sys
import time

from common import data_root, run_entry_point, scratch_dir

EPOCH_LINE = re.compile(r"epoch (\d+) (training|evaluating) \[time: ([0-9.]+)s")
METRIC_DICT = re.compile(r"(\{'HR@5'.*?\})")


class EpochTimes(logging.Handler):
    """Collects RecBole's 'epoch N training/evaluating [time: Xs' log lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.times = {"training": {}, "evaluating": {}}

    def emit(self, record):
        match = EPOCH_LINE.search(record.getMessage())
        if match:
            self.times[match.group(2)][int(match.group(1))] = float(match.group(3))


def run_ours(args):
    import torch

    torch.set_num_threads(args.threads)
    from recbole_mm import quick_start

    config = {
        "data_path": data_root(args.data_path, args.dataset),
        "epochs": args.epochs, "stopping_step": args.epochs, "eval_step": 1,
        "multimodal_features": {"image": {"file": "image_feat.npy"}, "text": {"file": "text_feat.npy"}},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "mask_history_items": True,
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [10, 20], "valid_metric": "hit@20",
        "show_progress": False, "state": "INFO", "log_wandb": False,
        "checkpoint_dir": scratch_dir("bench_mustrec_vs_official_saved"), **json.loads(args.set),
    }
    handler = EpochTimes()
    init_logger = quick_start.init_logger

    def init_logger_then_listen(cfg):  # RecBole's logging.basicConfig must run first
        init_logger(cfg)
        logging.getLogger().addHandler(handler)

    quick_start.init_logger = init_logger_then_listen
    start, start_cpu = time.time(), time.process_time()
    result = quick_start.run_recbole_mm(model="MuSTRec", dataset=args.dataset, config_dict=config)
    record = {"code": "recbole_mm", "threads": args.threads, "epochs": args.epochs, "overrides": json.loads(args.set),
              "train_s_per_epoch": handler.times["training"], "valid_eval_s": handler.times["evaluating"],
              "total_wall_s": round(time.time() - start, 1), "total_cpu_s": round(time.process_time() - start_cpu, 1),
              "best_valid": result["best_valid_result"], "test": result["test_result"]}
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1, default=float)
    print(json.dumps(record, default=float))


def parse_official(path):
    times = {"training": {}, "evaluating": {}}
    metric_dicts = []
    with open(path, errors="replace") as handle:
        for line in handle:
            match = EPOCH_LINE.search(line)
            if match:
                times[match.group(2)][int(match.group(1))] = float(match.group(3))
            found = METRIC_DICT.search(line)
            if found:
                metric_dicts.append({k: float(v) for k, v in ast.literal_eval(found.group(1)).items()})
    # per epoch: validation dict, then test dict (Trainer.fit evaluates both every epoch)
    epochs = [{"valid": metric_dicts[i], "test": metric_dicts[i + 1]} for i in range(0, len(metric_dicts) - 1, 2)]
    best = max(range(len(epochs)), key=lambda e: epochs[e]["valid"]["HR@20"]) if epochs else None
    return {"train_s_per_epoch": times["training"], "eval_s_per_epoch": times["evaluating"],
            "epochs": epochs, "best_epoch": best, "test_at_best": epochs[best]["test"] if epochs else None}


def compare(args):
    with open(args.ours) as handle:
        ours = json.load(handle)
    official = parse_official(args.official)
    ours_train = list(ours["train_s_per_epoch"].values())
    official_train = list(official["train_s_per_epoch"].values())
    n = min(len(ours_train), len(official_train))
    ours_mean, official_mean = statistics.mean(ours_train[:n]), statistics.mean(official_train[:n])
    test = ours["test"]
    rows = [
        "| code | epochs | train s/epoch (mean) | eval s | test HR@10 | test HR@20 | test NDCG@10 | test NDCG@20 |",
        "|---|---|---|---|---|---|---|---|",
        f"| official (patched, CPU) | {n} | {official_mean:.1f} | {statistics.mean(official['eval_s_per_epoch'].values()):.1f}"
        f" (valid) | {official['test_at_best']['HR@10']:.4f} | {official['test_at_best']['HR@20']:.4f}"
        f" | {official['test_at_best']['NDCG@10']:.4f} | {official['test_at_best']['NDCG@20']:.4f} |",
        f"| recbole_mm | {n} | {ours_mean:.1f} | {statistics.mean(ours['valid_eval_s'].values()):.1f} (valid)"
        f" | {test['hit@10']:.4f} | {test['hit@20']:.4f} | {test['ndcg@10']:.4f} | {test['ndcg@20']:.4f} |",
        "",
        f"ratio ours / official, training time per epoch: {ours_mean / official_mean:.2f}",
        f"official per-epoch train s: {official_train[:n]}; ours: {ours_train[:n]}",
        f"official best validation epoch: {official['best_epoch']}; per-epoch valid HR@20: "
        f"{[round(e['valid']['HR@20'], 4) for e in official['epochs']]}",
    ]
    print("\n".join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ours = sub.add_parser("ours", help="train recbole_mm's MuSTRec and record times and metrics")
    ours.add_argument("--data_path", default=None, help="folder holding <dataset>/ (docs/datasets.md)")
    ours.add_argument("--dataset", default="babyscale")
    ours.add_argument("--epochs", type=int, default=6)
    ours.add_argument("--threads", type=int, default=1)
    ours.add_argument("--set", default="{}", help="JSON dict of config overrides")
    ours.add_argument("--out", default="mustrec_vs_official.json")
    both = sub.add_parser("compare", help="table of our JSON against the official log")
    both.add_argument("--ours", required=True)
    both.add_argument("--official", required=True)
    args = parser.parse_args()
    run_ours(args) if args.command == "ours" else compare(args)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
