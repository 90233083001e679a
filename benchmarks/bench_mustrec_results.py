"""MuSTRec, its variants and SASRec on ml-100k / scientific with one protocol (docs/results/mustrec.md).

    # SCRATCH: any scratch folder
    python benchmarks/bench_mustrec_results.py --dataset scientific --data_path DATA --out SCRATCH/mustrec_sci.jsonl
    python benchmarks/bench_mustrec_results.py --dataset ml-100k --runs MuSTRec,SASRec

Protocol: leave-one-out (valid = second-to-last, test = last item), time order, full ranking,
history masked (`mask_history_items: true`), selection on valid HR@20 (`valid_metric`), the best
validation epoch's model is tested. One JSON line per run is appended to --out.
``DATA`` is the folder holding ``scientific/`` (docs/datasets.md); ml-100k needs none.
"""
import argparse
import json
import os
import sys
import time

from common import REPO, add_data_args, add_run_args, append_record, data_overrides, run_entry_point, scratch_dir

# name -> (model, overrides)
RUNS = {
    "SASRec": ("SASRec", {}),
    "MuSTRec": ("MuSTRec", {}),
    "MuSTRec-id": ("MuSTRec", {"seq_item_source": "id"}),
    "MuSTRec-B": ("MuSTRec", {"variant": "B"}),
    "MuSTRec-M": ("MuSTRec", {"variant": "M"}),
    "MuSTRec-I": ("MuSTRec", {"variant": "I"}),
    "MuSTRec-U": ("MuSTRec", {"variant": "U"}),
    "MuSTRec-S": ("MuSTRec", {"variant": "S"}),
}

# Small CPU settings shared by every run of a dataset (SASRec gets the same head sizes).
SETTINGS = {
    "ml-100k": {"MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 1024, "epochs": 5, "stopping_step": 5,
                "pretrain_epochs": 5},
    "scientific": {"MAX_ITEM_LIST_LENGTH": 20, "train_batch_size": 512, "epochs": 30, "stopping_step": 5,
                   "pretrain_epochs": 30, "pretrain_stopping_step": 5},
}
COMMON = {"hidden_size": 64, "embedding_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
          "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "learning_rate": 0.001,
          "valid_metric": "hit@20", "mask_history_items": True, "metrics": ["Hit", "NDCG", "MRR"],
          "topk": [10, 20], "show_progress": False, "state": "ERROR", "log_wandb": False, "seed": 2020}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, dataset="ml-100k", choices=sorted(SETTINGS))
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated names of RUNS")
    parser.add_argument("--out", default="mustrec_results.jsonl")
    add_run_args(parser)
    args = parser.parse_args()
    data = data_overrides(args)

    import torch
    torch.set_num_threads(args.threads)
    from recbole_mm.quick_start import run_recbole_mm

    for name in args.runs.split(","):
        model, overrides = RUNS[name]
        # --set may move checkpoint_dir: parallel runs must not share it (RecBole names
        # checkpoints by model and start second)
        config = {**COMMON, **SETTINGS[args.dataset], **overrides, **data,
                  "checkpoint_dir": scratch_dir("mustrec_results_saved"), **json.loads(args.set)}
        if args.dataset == "ml-100k":
            config["mm_feature_path"] = os.path.join(REPO, "dataset", "ml-100k")
        if model == "SASRec":
            config = {k: v for k, v in config.items() if not k.startswith("pretrain")}
            config.update({"loss_type": "CE", "train_neg_sample_args": None})
        start = time.time()
        result = run_recbole_mm(model=model, dataset=args.dataset, config_dict=config, saved=True)
        record = {"name": name, "dataset": args.dataset, "config": {**SETTINGS[args.dataset], **overrides},
                  "valid": dict(result["best_valid_result"] or {}), "test": dict(result["test_result"]),
                  "seconds": round(time.time() - start, 1), "threads": args.threads}
        append_record(args.out, record)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
