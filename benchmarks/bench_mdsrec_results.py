"""Small CPU quality runs of MDSRec, its ablations and SASRec (docs/results/mdsrec.md).

    python benchmarks/bench_mdsrec_results.py --dataset scientific --data_path DATA --runs full sasrec no_cre \
        # SCRATCH: any scratch folder
        --out SCRATCH/mdsrec_results.jsonl [--epochs 30] [--threads 1]

``DATA`` is the folder holding ``scientific/``; ml-100k needs none (RecBole ships it).

Every run uses the same small dimensions for MDSRec and SASRec (``SMALL`` below) and the
project protocol (leave-one-out, time order, full ranking, no history masking). One JSON line
per run is appended to ``--out``.
"""
import argparse
import os
import sys
import time

from common import add_data_args, append_record, data_overrides, run_entry_point

SMALL = dict(embedding_size=64, hidden_size=64, inner_size=128, n_layers=2, n_heads=2, MAX_ITEM_LIST_LENGTH=20,
             train_batch_size=512, eval_batch_size=1024, learning_rate=1e-3, stopping_step=5)
# name -> (model, overrides); ablation names follow Table 3 of the paper
RUNS = {
    "sasrec": ("SASRec", dict(loss_type="CE")),
    "full": ("MDSRec", {}),
    "no_dis": ("MDSRec", dict(cooc_weight="count")),
    "no_cre": ("MDSRec", dict(use_cre_graph=False)),
    "no_mrgc": ("MDSRec", dict(use_mrgc=False)),
    "no_ica": ("MDSRec", dict(use_ica=False)),
}
DATASETS = {  # per-dataset settings; H and k from the paper where the dataset is in it
    "scientific": dict(knn_k=5, n_centers=16),
    "ml-100k": dict(knn_k=10, n_centers=16),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, dataset="scientific", choices=sorted(DATASETS))
    parser.add_argument("--runs", nargs="+", default=["sasrec", "full"], choices=sorted(RUNS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides (yaml values)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = data_overrides(args)

    import torch
    import yaml

    from recbole_mm import registry
    from recbole_mm.quick_start import run_recbole_mm

    torch.set_num_threads(args.threads)
    registry.get_model("SASRec")  # RecBole's SINE module turns on anomaly mode when imported
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    for name in args.runs:
        model, overrides = RUNS[name]
        config = dict(SMALL, epochs=args.epochs, seed=args.seed, show_progress=False, state="INFO",
                      graph_cache_dir=os.path.abspath("graph_cache"),  # never inside the data folder
                      **DATASETS[args.dataset], **data)
        if model != "MDSRec":
            config = {k: v for k, v in config.items() if k not in ("knn_k", "n_centers")}
        config.update(overrides)
        config.update(extra)
        start = time.time()
        result = run_recbole_mm(model=model, dataset=args.dataset, config_dict=config, saved=True)
        record = dict(run=name, model=model, dataset=args.dataset, config=config, seconds=round(time.time() - start, 1),
                      valid=dict(result["best_valid_result"]), test=dict(result["test_result"]))
        append_record(args.out, record)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
