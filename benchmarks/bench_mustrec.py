"""MuSTRec timing on a Baby-scale synthetic set (docs/benchmarks/mustrec.md).

    # SCRATCH: any scratch folder
    # SCRATCH/src: a Baby-scale set in MMRec format (babyscale.inter, image_feat.npy, text_feat.npy;
    # docs/datasets.md, "Synthetic Baby/Elec-scale sets")
    python -m recbole_mm.prepare mmrec --src SCRATCH/src --name babyscale --out SCRATCH/data
    python benchmarks/bench_mustrec.py --data_path SCRATCH/data --dataset babyscale --steps 40

Measures (paper defaults unless --set overrides): model construction (kNN graph, user-item
graph), the mean time of --steps training steps after a warm-up step (Adam, pruned graph
resampled once), extrapolated to one epoch (batches per epoch x mean step), and one full-sort
evaluation of the test split (all users, all items, history masked). Wall time and process CPU
time are both reported: when other processes load the machine, CPU time at --threads 1 is the
better estimate of an idle single-core run. Prints one JSON line.
"""
import argparse
import datetime
import json
import os
import resource
import sys
import time

from common import add_data_args, add_run_args, data_overrides, run_entry_point, scratch_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, dataset="babyscale")
    parser.add_argument("--model", default="MuSTRec")
    parser.add_argument("--steps", type=int, default=40)
    add_run_args(parser, threads=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of 3 steps")
    args = parser.parse_args()
    data = data_overrides(args)

    import torch
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm import registry
    from recbole_mm.config import Config
    from recbole_mm.quick_start import create_dataset

    overrides = {"state": "ERROR", "show_progress": False, "log_wandb": False,
                 "mask_history_items": True, "use_gpu": args.device != "cpu",
                 "checkpoint_dir": scratch_dir("bench_mustrec_saved"), **data, **json.loads(args.set)}
    config = Config(args.model, args.dataset, config_dict=overrides, parse_argv=False)
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
    step_times, step_cpu = [], []
    for index, batch in enumerate(train_data):
        if index > args.steps:
            break
        batch = batch.to(config["device"])
        sync()
        begin, begin_cpu = time.time(), time.process_time()
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        sync()
        if index > 0:  # step 0 is warm-up
            step_times.append(time.time() - begin)
            step_cpu.append(time.process_time() - begin_cpu)
    if args.profile:
        from torch.profiler import profile
        with profile() as prof:
            for _, batch in zip(range(3), train_data):
                optimizer.zero_grad()
                model.calculate_loss(batch.to(config["device"])).backward()
                optimizer.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    n_batches = len(train_data)
    step_s = sum(step_times) / len(step_times)
    step_cpu_s = sum(step_cpu) / len(step_cpu)
    start, start_cpu = time.time(), time.process_time()
    result = trainer.evaluate(test_data, load_best_model=False)
    sync()
    eval_s, eval_cpu_s = time.time() - start, time.process_time() - start_cpu
    params = sum(p.numel() for p in model.parameters())
    record = {"model": args.model, "dataset": args.dataset, "overrides": json.loads(args.set),
              "device": str(config["device"]), "threads": args.threads, "users": dataset.user_num - 1,
              "items": dataset.item_num - 1, "train_samples": len(train_data.dataset),
              "batches_per_epoch": n_batches, "data_s": round(data_s, 1), "build_s": round(build_s, 2),
              "step_s": round(step_s, 4), "epoch_s_extrapolated": round(step_s * n_batches, 1),
              "step_cpu_s": round(step_cpu_s, 4), "epoch_cpu_s_extrapolated": round(step_cpu_s * n_batches, 1),
              "full_sort_test_eval_cpu_s": round(eval_cpu_s, 2),
              "measured_steps": len(step_times), "full_sort_test_eval_s": round(eval_s, 2),
              "parameters": params, "test_after_steps": {k: round(v, 4) for k, v in result.items()},
              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
