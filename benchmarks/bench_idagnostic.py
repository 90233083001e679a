"""Train one model, time its epochs, and evaluate it on all test users and on a cold-item subset.

The cold subset follows Li et al. 2023 (Table 8): test rows whose target item occurs fewer than
``--cold_threshold`` times in the training split. Scores come from ``full_sort_predict`` with
RecBole's protocol (only PAD masked unless ``mask_history_items: true`` is passed).

Example (from the repository root)::

    python benchmarks/bench_idagnostic.py --model IDAgnosticMMSR --dataset scientific \
        --data_path DATA --config '{"epochs": 3, "n_finetune_blocks_text": 1}'
    python benchmarks/bench_idagnostic.py --model SASRec --dataset scientific --data_path DATA

``DATA`` is the folder holding ``scientific/`` (docs/datasets.md); ml-100k needs none.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from common import add_data_args, data_overrides, run_entry_point


def ranks_of_targets(model, loader, device):
    """(rank of the target among all items, target id) for every row of ``loader``."""
    ranks, targets = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            interaction = batch[0].to(device)
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = -math.inf
            item = interaction[model.ITEM_ID]
            target_score = scores.gather(1, item.unsqueeze(1))
            # ties (items with identical text get identical vectors) rank above the target
            ranks.append(((scores >= target_score).sum(1) - 1).cpu())
            targets.append(item.cpu())
    model.train(was_training)
    return torch.cat(ranks), torch.cat(targets)


def hit_ndcg(ranks, k=10):
    """HR@k and NDCG@k from 0-based ranks (pessimistic on ties)."""
    if len(ranks) == 0:
        return {"n": 0}
    hit = (ranks < k).float()
    ndcg = hit / torch.log2(ranks.float() + 2)
    return {"n": len(ranks), f"hit@{k}": round(hit.mean().item(), 4), f"ndcg@{k}": round(ndcg.mean().item(), 4)}


def main():
    from recbole.data import data_preparation
    from recbole.utils import init_logger, init_seed

    from recbole_mm import registry
    from recbole_mm.config import Config
    from recbole_mm.quick_start import create_dataset

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    add_data_args(parser, dataset="scientific")
    parser.add_argument("--config", default="{}", help="JSON dict of config overrides")
    parser.add_argument("--cold_threshold", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the result JSON here")
    parser.add_argument("--eval_only", default=None, help="checkpoint to evaluate instead of training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"show_progress": False, **data_overrides(args), **json.loads(args.config)}
    config = Config(model=args.model, dataset=args.dataset, config_dict=overrides, parse_argv=False)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    start = time.time()
    model = registry.get_model(config["model"])(config, train_data._dataset).to(config["device"])
    build_s = time.time() - start
    trainer = registry.get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_times, inner = [], trainer._train_epoch

    def timed(*a, **k):
        t = time.time()
        out = inner(*a, **k)
        epoch_times.append(round(time.time() - t, 2))
        return out

    trainer._train_epoch = timed
    if args.eval_only:
        best_valid = None
        test_result = trainer.evaluate(test_data, model_file=args.eval_only, show_progress=False)
    else:
        best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    t = time.time()
    ranks, targets = ranks_of_targets(model, test_data, config["device"])
    eval_s = time.time() - t
    counts = np.asarray(train_data._dataset.train_interaction_matrix().sum(0)).ravel()
    cold = torch.from_numpy(counts[targets.numpy()] < args.cold_threshold)
    result = {
        "model": args.model, "dataset": args.dataset, "overrides": json.loads(args.config),
        "build_s": round(build_s, 1), "epoch_s": epoch_times, "test_eval_s": round(eval_s, 1),
        "best_valid": dict(best_valid or {}), "recbole_test": dict(test_result),
        "all": hit_ndcg(ranks), f"cold(<{args.cold_threshold} train occurrences)": hit_ndcg(ranks[cold]),
        "warm": hit_ndcg(ranks[~cold]),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
