"""One-command GPU check: everything a few minutes on a lent CUDA GPU should measure (docs/benchmarks/gpu.md).

    python benchmarks/gpu_check.py                        # generates its data, writes gpu_check.json/.md
    python benchmarks/gpu_check.py --data DATA_ROOT       # DATA_ROOT/babyscale/ prepared by recbole_mm.prepare
    # SCRATCH: any scratch folder
    python benchmarks/gpu_check.py --dry-run --out SCRATCH/x # tiny sizes on CPU, DDP command not run (tests)

Stages, in order, each timed and recorded even when a later one fails; a stage that would start
after ``--budget_s`` is skipped and marked so (default 450 s, so the whole command stays under 8
minutes on one GPU):

1. data: ``--data`` if given, else a Baby-scale synthetic set written by :func:`write_synthetic`
   (19,445 users, 7,050 items, 160,792 interactions, 4,096-d image and 384-d text features);
2. per model (MuSTRec, MMSR, MDSRec at d 64 and at the paper's d 300, SASRec at d 64 as the
   reference of MDSRec's towers): build time, mean training step over ``--steps`` steps after two
   warm-up steps (CUDA synchronised), one full-sort evaluation of the test split, peak GPU memory;
3. exact cosine top-10 kNN at Elec scale (63,001 x 4,096 random features, ``graphs.knn``);
4. a 1-GPU DDP run over nccl: ``torchrun --nproc_per_node=1 run_recbole_mm.py`` (MuSTRec, 1 epoch).

Results: ``<out>.json`` (every number, the device, torch/CUDA versions, the command, the date)
and ``<out>.md`` (the same as tables).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

BABY = {"users": 19445, "items": 7050, "inters": 160792, "dims": {"image": 4096, "text": 384}}
TINY = {"users": 300, "items": 120, "inters": 2400, "dims": {"image": 32, "text": 16}}
ELEC_KNN = (63001, 4096)
TINY_KNN = (2000, 64)
MODELS = [  # (label, model, settings)
    ("MuSTRec", "MuSTRec", {}),
    ("MMSR (codes by PCA)", "MMSR", {"code_reduce": "pca"}),
    ("MDSRec d64", "MDSRec", {"embedding_size": 64, "inner_size": 128}),
    ("MDSRec d300 (paper)", "MDSRec", {}),
    ("SASRec d64", "SASRec", {"hidden_size": 64, "inner_size": 128, "loss_type": "CE"}),
]
TINY_SETTINGS = {"embedding_size": 16, "inner_size": 32, "n_centers": 4, "knn_k": 3, "code_num": 4,
                 "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 64, "eval_batch_size": 256}


def write_synthetic(folder, name, users, items, inters, dims, seed=0):
    """A synthetic sequential set in RecBole's atomic format plus ``<modality>_feat.npy`` files.

    Items fall in 50 topics; each user prefers one topic (70 % of their items) and otherwise
    follows a Zipf popularity; feature rows are their topic's centre plus noise, so features and
    sequences agree. Sequence lengths are 5 + geometric, scaled to give ``inters`` interactions.
    Row ``r`` of each feature file belongs to item token ``r``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    topics = rng.integers(0, 50, size=items)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity = popularity[rng.permutation(items)]
    popularity /= popularity.sum()
    extra = max(inters / users - 5.0, 0.1)
    lengths = 5 + rng.geometric(1.0 / (1.0 + extra), size=users) - 1
    lengths = np.minimum(lengths, items // 2)
    members = [np.flatnonzero(topics == t) for t in range(50)]
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    clock = 0
    for user, length in enumerate(lengths):
        topic_items = members[rng.integers(0, 50)]
        own = rng.random(length) < 0.7 if len(topic_items) else np.zeros(length, dtype=bool)
        sequence = rng.choice(items, size=length, p=popularity)
        sequence[own] = rng.choice(topic_items, size=int(own.sum())) if own.any() else sequence[own]
        for item in sequence:
            rows.append(f"{user}\t{item}\t{clock}")
            clock += 1
    with open(os.path.join(folder, f"{name}.inter"), "w") as handle:
        handle.write("\n".join(rows) + "\n")
    for modality, dim in dims.items():
        centres = rng.normal(size=(50, dim)).astype(np.float32)
        features = centres[topics] + 0.5 * rng.normal(size=(items, dim)).astype(np.float32)
        np.save(os.path.join(folder, f"{modality}_feat.npy"), np.abs(features) if modality == "image" else features)
    return {"users": users, "items": items, "interactions": len(rows) - 1, "dims": dims}


class Stages:
    """Runs stages under a time budget and records each one's result or error."""

    def __init__(self, budget_s):
        self.start, self.budget_s, self.records = time.time(), budget_s, []

    def run(self, name, function):
        elapsed = time.time() - self.start
        if elapsed > self.budget_s:
            self.records.append({"stage": name, "status": "skipped", "reason": f"budget {self.budget_s} s used"})
            return None
        begin = time.time()
        try:
            result = function()
            self.records.append({"stage": name, "status": "ok", "wall_s": round(time.time() - begin, 2), **result})
            return result
        except Exception as err:  # noqa: BLE001 - a failed stage is a result, the next stages still run
            self.records.append({"stage": name, "status": "failed", "wall_s": round(time.time() - begin, 2),
                                 "error": f"{type(err).__name__}: {err}",
                                 "traceback": traceback.format_exc(limit=4)})
            return None


def time_model(model_name, settings, args, data_root, device):
    import torch

    import bench_eval

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    options = argparse.Namespace(data_path=data_root, dataset=args.dataset, work_dir=args.work_dir)
    overrides = {"use_gpu": device == "cuda", **settings, **(TINY_SETTINGS if args.dry_run else {})}
    if model_name == "SASRec" and "embedding_size" in overrides:  # RecBole's width key
        overrides["hidden_size"] = overrides.pop("embedding_size")
    begin = time.time()
    config, model, trainer, train_data, test_data = bench_eval.build(model_name, options, overrides)
    build_s = time.time() - begin
    optimizer = trainer.optimizer
    if hasattr(model, "on_epoch_start"):
        model.on_epoch_start(0)
    model.train()
    times = []
    for index, batch in enumerate(train_data):
        if index >= args.steps + 2:
            break
        batch = batch.to(config["device"])
        sync()
        step_begin = time.time()
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
        sync()
        if index >= 2:
            times.append(time.time() - step_begin)
    step_s = sum(times) / max(len(times), 1)
    sync()
    begin = time.time()
    result = trainer.evaluate(test_data, load_best_model=False)
    sync()
    eval_s = time.time() - begin
    record = {"model": model_name, "settings": settings, "build_s": round(build_s, 2),
              "step_s": round(step_s, 5), "steps": len(times), "batches_per_epoch": len(train_data),
              "epoch_s_extrapolated": round(step_s * len(train_data), 1), "eval_s": round(eval_s, 3),
              "eval_users": len(test_data._dataset), "eval_users_per_s": round(len(test_data._dataset) / eval_s, 1),
              "parameters": sum(p.numel() for p in model.parameters()),
              "test_after_steps": {k: round(float(v), 4) for k, v in result.items()}}
    if device == "cuda":
        record["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del model, trainer
    if device == "cuda":
        torch.cuda.empty_cache()
    return record


def time_knn(shape, device):
    import torch

    from recbole_mm.graphs.knn import topk_cosine

    generator = torch.Generator(device=device).manual_seed(0)
    features = torch.rand(shape, generator=generator, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    begin = time.time()
    values, indices = topk_cosine(features, 10)
    sync()
    return {"n": shape[0], "d": shape[1], "k": 10, "exact_knn_s": round(time.time() - begin, 3),
            "shape_out": list(indices.shape)}


def ddp_command(args, data_root):
    return ["torchrun", "--nproc_per_node=1", os.path.join(REPO, "run_recbole_mm.py"), "--model=MuSTRec",
            f"--dataset={args.dataset}", f"--data_path={data_root}", "--epochs=1", "--dist_backend=nccl",
            "--use_gpu=True", "--show_progress=False", "--state=INFO",
            f"--checkpoint_dir={os.path.join(args.work_dir, 'ddp_saved')}",
            f"--graph_cache_dir={os.path.join(args.work_dir, 'graph_cache')}"]


def run_ddp(args, data_root, timeout_s):
    command = ddp_command(args, data_root)
    if args.dry_run:
        return {"command": " ".join(command), "ran": False}
    begin = time.time()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=args.work_dir)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-2000:]}")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "training [time" in line or "test result" in line]
    return {"command": " ".join(command), "ran": True, "ddp_wall_s": round(time.time() - begin, 1), "log": lines[-4:]}


def environment(device):
    """Versions, and a clear failure when the project's dependencies are not installed."""
    import importlib.metadata

    import torch

    versions = {}
    for package in ("torch", "recbole", "numpy", "scipy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(f"{package} is not installed: install the project first "
                               "(python -m pip install -e .[all]) with a CUDA build of torch") from None
    if device == "cuda":
        versions["gpu"] = torch.cuda.get_device_name(0)
        versions["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return versions


def markdown(report):
    lines = [f"# GPU check, {report['date']}", "", f"Device: {report['device_name']}; torch {report['torch']}, "
             f"CUDA {report['cuda']}; command `{report['command']}`; total {report['total_s']} s.", "",
             "| stage | status | wall s | numbers |", "|---|---|---|---|"]
    for record in report["stages"]:
        numbers = {k: v for k, v in record.items() if k not in ("stage", "status", "wall_s", "traceback", "log")}
        lines.append(f"| {record['stage']} | {record['status']} | {record.get('wall_s', '')} | "
                     f"{json.dumps(numbers, default=str)} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="data root holding <dataset>/ (else a synthetic set is written)")
    parser.add_argument("--dataset", default="babyscale")
    parser.add_argument("--out", default="gpu_check", help="writes <out>.json and <out>.md")
    parser.add_argument("--work_dir", default=None, help="data, caches and checkpoints; ~ = <out>_work")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budget_s", type=float, default=450.0, help="no stage starts after this many seconds")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="tiny data and kNN on CPU, DDP command recorded but not run (for tests)")
    args = parser.parse_args(argv)
    args.work_dir = os.path.abspath(args.work_dir or args.out + "_work")
    os.makedirs(args.work_dir, exist_ok=True)
    if args.dry_run:
        args.steps = min(args.steps, 2)

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    stages = Stages(args.budget_s)
    stages.run("environment", lambda: environment(device))
    data_root = os.path.abspath(args.data) if args.data else os.path.join(args.work_dir, "data")
    if not args.data:
        sizes = TINY if args.dry_run else BABY
        stages.run("synthetic data", lambda: write_synthetic(os.path.join(data_root, args.dataset), args.dataset,
                                                             sizes["users"], sizes["items"], sizes["inters"],
                                                             sizes["dims"]))
    for label, model_name, settings in MODELS:
        stages.run(f"{label}: step and evaluation",
                   lambda m=model_name, s=settings: time_model(m, s, args, data_root, device))
    stages.run("exact kNN", lambda: time_knn(TINY_KNN if args.dry_run else ELEC_KNN, device))
    stages.run("1-GPU DDP (nccl), MuSTRec 1 epoch",
               lambda: run_ddp(args, data_root, max(30.0, args.budget_s + 30 - (time.time() - stages.start))))
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
              "device": device, "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor()
              or platform.machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "dry_run": args.dry_run, "total_s": round(time.time() - stages.start, 1), "stages": stages.records}
    with open(args.out + ".json", "w") as handle:
        json.dump(report, handle, indent=1, default=str)
    with open(args.out + ".md", "w") as handle:
        handle.write(markdown(report))
    print(markdown(report))
    return 0 if all(r["status"] == "ok" for r in stages.records) else 1


if __name__ == "__main__":
    sys.exit(main())
