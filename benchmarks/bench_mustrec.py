"""MuSTRec timing on a Baby-scale synthetic set (docs/benchmarks/mustrec.md).

    python /work/shared/tools/make_synthetic_mmrec.py --out /tmp/src --name babyscale
    python -m recbole_mm.prepare mmrec --src /tmp/src --name babyscale --out /tmp/data
    python benchmarks/bench_mustrec.py --data_path /tmp/data --dataset babyscale --steps 40

Measures (paper defaults unless --set overrides): model construction (kNN graph, user-item
graph), the mean time of --steps training steps after a warm-up step (Adam, pruned graph
resampled once), extrapolated to one epoch (batches per epoch x mean step), and one full-sort
evaluation of the test split (all users, all items, history masked). Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--dataset", default="babyscale")
    parser.add_argument("--model", default="MuSTRec")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", default="{}", help="JSON dict of config overrides")
    args = parser.parse_args()

    import torch
    import recbole.model.sequential_recommender  # noqa: F401  (sine.py turns on anomaly detection)
    torch.autograd.set_detect_anomaly(False)
    torch.set_num_threads(args.threads)
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm import registry
    from recbole_mm.config import Config
    from recbole_mm.quick_start import create_dataset

    overrides = {"data_path": args.data_path, "state": "ERROR", "show_progress": False, "log_wandb": False,
                 "mask_history_items": True, "use_gpu": args.device != "cpu",
                 "checkpoint_dir": "/tmp/bench_mustrec_saved", **json.loads(args.set)}
    config = Config(args.model, args.dataset, config_dict=overrides)
    init_seed(config["seed"], True)
    start = time.time()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    data_s = time.time() - start

    start = time.time()
    model = registry.get_model(args.model)(config, train_data.dataset).to(config["device"])
    build_s = time.time() - start
    trainer = registry.get_trainer(config["MODEL_TYPE"], args.model)(config, model)
    optimizer = trainer.optimizer
    if hasattr(model, "on_epoch_start"):
        model.on_epoch_start(0)
    model.train()
    sync = torch.cuda.synchronize if config["device"].type == "cuda" else (lambda: None)
    step_times = []
    for index, batch in enumerate(train_data):
        if index > args.steps:
            break
        batch = batch.to(config["device"])
        sync()
        begin = time.time()
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        sync()
        if index > 0:  # step 0 is warm-up
            step_times.append(time.time() - begin)
    n_batches = len(train_data)
    step_s = sum(step_times) / len(step_times)
    start = time.time()
    result = trainer.evaluate(test_data, load_best_model=False)
    sync()
    eval_s = time.time() - start
    params = sum(p.numel() for p in model.parameters())
    record = {"model": args.model, "dataset": args.dataset, "overrides": json.loads(args.set),
              "device": str(config["device"]), "threads": args.threads, "users": dataset.user_num - 1,
              "items": dataset.item_num - 1, "train_samples": len(train_data.dataset),
              "batches_per_epoch": n_batches, "data_s": round(data_s, 1), "build_s": round(build_s, 2),
              "step_s": round(step_s, 4), "epoch_s_extrapolated": round(step_s * n_batches, 1),
              "measured_steps": len(step_times), "full_sort_test_eval_s": round(eval_s, 2),
              "parameters": params, "test_after_steps": {k: round(v, 4) for k, v in result.items()}}
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
