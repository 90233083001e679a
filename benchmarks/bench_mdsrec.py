"""MDSRec timing on a Baby-scale synthetic set (docs/benchmarks/mdsrec.md).

    # SCRATCH: any scratch folder
    # SCRATCH/src: a Baby-scale set in MMRec format (babyscale.inter, image_feat.npy, text_feat.npy;
    # docs/datasets.md, "Synthetic Baby/Elec-scale sets")
    python -m recbole_mm.prepare mmrec --src SCRATCH/src --name babyscale --out SCRATCH/data
    python benchmarks/bench_mdsrec.py --data_path SCRATCH/data --dataset babyscale --steps 20 \
        [--set '{"embedding_size": 64}'] [--full-epoch] [--threads 1]

Measures (paper defaults of properties/model/MDSRec.yaml unless --set overrides):
- the item-side precomputation with an empty graph cache (co-occurrence of the training
  sequences, behaviour injection + exact chunked top-H per modality, k-means per modality),
  then the same construction again from the cache;
- the mean time of --steps training steps (Adam) after one warm-up step, extrapolated to one
  epoch, or (--full-epoch) one real epoch through the trainer;
- one full-sort evaluation of the validation split (all users, all items).
Wall and process CPU times are both reported (when other processes load the machine, CPU time
at --threads 1 is the better estimate of an idle single core). Prints one JSON line.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from common import add_data_args, add_run_args, data_overrides, run_entry_point


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.time(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = round(time.time() - self.wall, 2), round(time.process_time() - self.cpu, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, dataset="babyscale")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--full-epoch", action="store_true")
    add_run_args(parser)
    args = parser.parse_args()
    data = data_overrides(args)

    import torch

    torch.set_num_threads(args.threads)
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm import registry
    from recbole_mm.config import Config
    from recbole_mm.model.layers import mdsrec_item_graphs as graphs
    from recbole_mm.quick_start import create_dataset

    cache_dir = tempfile.mkdtemp(prefix="bench_mdsrec_cache_")
    overrides = {"state": "ERROR", "show_progress": False, "log_wandb": False, "graph_cache_dir": cache_dir,
                 "checkpoint_dir": os.path.join(cache_dir, "saved"), **data, **json.loads(args.set)}
    config = Config("MDSRec", args.dataset, config_dict=overrides, parse_argv=False)
    init_seed(config["seed"], True)
    with Clock() as data_clock:
        dataset = create_dataset(config)
        train_data, valid_data, _ = data_preparation(config, dataset)
    train_set = train_data.dataset

    # item side, stage by stage, with an empty cache
    parts = {}
    stages = ("cooccurrence_matrix", "inject_behaviour", "modal_graph", "kmeans")
    original = {name: getattr(graphs, name) for name in stages}

    def timed(name):
        def wrapper(*a, **kw):
            with Clock() as clock:
                out = original[name](*a, **kw)
            parts.setdefault(name, []).append(clock.wall)
            return out
        return wrapper

    for name in original:
        setattr(graphs, name, timed(name))
    model_class = registry.get_model("MDSRec")
    with Clock() as build_clock:
        model = model_class(config, train_set)
    for name, fn in original.items():
        setattr(graphs, name, fn)
    with Clock() as cached_clock:
        model = model_class(config, train_set).to(config["device"])

    trainer = registry.get_trainer(config["MODEL_TYPE"], "MDSRec")(config, model)
    record = dict(dataset=args.dataset, threads=args.threads, users=train_set.user_num - 1,
                  items=train_set.item_num - 1, train_rows=len(train_set), batches_per_epoch=len(train_data),
                  modalities=model.modalities, embedding_size=config["embedding_size"],
                  max_len=config["MAX_ITEM_LIST_LENGTH"],
                  batch=config["train_batch_size"], knn_k=config["knn_k"], n_centers=config["n_centers"],
                  cooc_nnz=int(model.cooc_values.numel()), data_s=data_clock.wall,
                  build_uncached_s=build_clock.wall, build_uncached_cpu_s=build_clock.cpu,
                  build_parts_s={k: [round(v, 2) for v in vals] for k, vals in parts.items()},
                  build_cached_s=cached_clock.wall)
    if args.full_epoch:
        with Clock() as epoch_clock:
            trainer._train_epoch(train_data, 0, show_progress=False)
        record.update(epoch_s=epoch_clock.wall, epoch_cpu_s=epoch_clock.cpu)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
        model.train()
        batches = iter(train_data)
        step_walls, step_cpus = [], []
        for step in range(args.steps + 1):
            interaction = next(batches).to(config["device"])
            with Clock() as clock:
                optimizer.zero_grad()
                model.calculate_loss(interaction).backward()
                optimizer.step()
            if step:  # the first step is a warm-up
                step_walls.append(clock.wall)
                step_cpus.append(clock.cpu)
        mean_wall, mean_cpu = sum(step_walls) / len(step_walls), sum(step_cpus) / len(step_cpus)
        record.update(step_s=round(mean_wall, 3), step_cpu_s=round(mean_cpu, 3),
                      epoch_est_s=round(mean_wall * len(train_data), 1),
                      epoch_est_cpu_s=round(mean_cpu * len(train_data), 1))
    with Clock() as eval_clock:
        result = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    record.update(eval_s=eval_clock.wall, eval_cpu_s=eval_clock.cpu, eval_users=len(valid_data.dataset),
                  valid=dict(result))
    import resource

    record.update(max_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
    shutil.rmtree(cache_dir, ignore_errors=True)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
