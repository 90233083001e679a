"""Seconds per training step and per full-catalogue encoding of IDAgnosticMMSR, with and without
the frozen-part cache, on one dataset (default: ``scientific``, MiniLM text encoder).

    python benchmarks/bench_idagnostic_speed.py --data_path DATA --steps 5 --k 1

``DATA`` is the folder holding ``scientific/`` (docs/datasets.md).

The first step is a warm-up and not timed; steps that meet items not yet cached include the fill
(in a real run each item is filled once for the whole training). ``item_table_s`` is the cost of
one evaluation's catalogue encoding once the cache is full.
"""
import argparse
import json
import sys
import time

import torch

from common import add_data_args, data_overrides, run_entry_point


def main():
    from recbole.data import data_preparation

    from recbole_mm.config import Config
    from recbole_mm.model.idagnostic import IDAgnosticMMSR
    from recbole_mm.quick_start import create_dataset

    parser = argparse.ArgumentParser()
    add_data_args(parser, dataset="scientific")
    parser.add_argument("--k", type=int, default=1, help="n_finetune_blocks_text")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", default="{}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {**data_overrides(args), "n_finetune_blocks_text": args.k,
                 "embedding_size": 64, "inner_size": 256, "show_progress": False, "state": "ERROR",
                 **json.loads(args.config)}
    config = Config(model="IDAgnosticMMSR", dataset=args.dataset, config_dict=overrides, parse_argv=False)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    batches = []
    for batch in train_data:  # the first steps + 1 batches of an epoch
        batches.append(batch)
        if len(batches) >= args.steps + 1:
            break
    results = {}
    for cache in (True, False):
        config["cache_frozen"] = cache
        torch.manual_seed(0)
        model = IDAgnosticMMSR(config, train_data._dataset)
        model.train()
        optimizer = torch.optim.AdamW(model.optimizer_param_groups())
        times = []
        for i, batch in enumerate(batches):
            start = time.time()
            loss = model.calculate_loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            model.on_train_step_end()
            if i > 0:
                times.append(time.time() - start)
        model.eval()
        model.item_table()  # fills the cache for items not seen in the timed steps
        model.invalidate_item_table()
        start = time.time()
        model.item_table()  # what every later evaluation costs
        table_s = time.time() - start
        results[f"cache_frozen={cache}"] = {"step_s_mean": round(sum(times) / len(times), 2),
                                            "item_table_s": round(table_s, 1)}
    print(json.dumps({"k": args.k, "steps": args.steps, **results}, indent=1))


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
