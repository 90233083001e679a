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

Training-step time of both codes in one run (issue 16.2), rounds of four runs one after the other
on the same machine: ours (defaults), ours with ``cpu_keep_freed_memory: false``, the official
code, and the official code with glibc set as ``cpu_keep_freed_memory`` sets ours (through
``GLIBC_TUNABLES``), so the allocator's share is visible on both sides:

    python benchmarks/bench_mustrec_vs_official.py steps --data_path SCRATCH/mustrec/data \
        --dataset babyscale --official_src OFFICIAL/src --official_python OFFICIAL_VENV/bin/python \
        --batches 20 --rounds 2 --out benchmarks/results/mustrec_steps.jsonl
    python benchmarks/bench_mustrec_vs_official.py steps-report \
        --results benchmarks/results/mustrec_steps.jsonl --out docs/benchmarks/mustrec_steps.md
"""
import argparse
import ast
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time

from common import REPO, append_record, data_root, run_entry_point, scratch_dir
from recbole_mm.errors import ConfigError, MissingFileError, RecBoleMMError
from recbole_mm.utils import HEAP_KEPT_BYTES, HEAP_SERVED_BYTES

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
    from recbole_mm.benchmark.runner import code_version

    record = {"code": "recbole_mm", "code_version": code_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "threads": args.threads, "epochs": args.epochs, "overrides": json.loads(args.set),
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


BABY_FEATURES = {"multimodal_features": {"image": {"file": "image_feat.npy"}, "text": {"file": "text_feat.npy"}},
                 "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
# glibc set as recbole_mm.utils.keep_freed_memory sets it, for a process we cannot change
SAME_ALLOCATOR = {"GLIBC_TUNABLES": f"glibc.malloc.mmap_threshold={HEAP_SERVED_BYTES}:"
                                    f"glibc.malloc.trim_threshold={HEAP_KEPT_BYTES}"}
STEP_VARIANTS = (  # (name, code, config overrides of ours, environment)
    ("recbole_mm", "ours", {}, {}),
    ("recbole_mm, cpu_keep_freed_memory: false", "ours", {"cpu_keep_freed_memory": False}, {}),
    ("official", "official", None, {}),
    ("official, allocator set as ours", "official", None, SAME_ALLOCATOR),
)


def last_json(output, prefix=""):
    """The last ``prefix{...}`` line of ``output`` as a dict, or None."""
    for line in reversed(output.splitlines()):
        if line.startswith(prefix + "{"):
            return json.loads(line[len(prefix):])
    return None


def time_steps(args, code, overrides, environment):
    env = {**os.environ, **environment}
    if code == "ours":
        command = [sys.executable, os.path.join(REPO, "benchmarks", "bench_mustrec.py"), "--data_path", args.data_path,
                   "--dataset", args.dataset, "--steps", str(args.batches), "--threads", str(args.threads),
                   "--set", json.dumps({**BABY_FEATURES, **overrides})]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        record = last_json(done.stdout) if done.returncode == 0 else None
    else:
        command = [args.official_python, os.path.join(REPO, "benchmarks", "official_mustrec_step.py"),
                   "--batches", str(args.batches), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=args.official_src)
        record = last_json(done.stdout, "STEP_JSON ") if done.returncode == 0 else None
    if record is None:
        log = os.path.join(scratch_dir("bench_mustrec_vs_official"), f"{code}_failed.log")
        with open(log, "w", encoding="utf-8") as handle:
            handle.write(f"{' '.join(command)}\n\n{done.stdout}\n{done.stderr}")
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RecBoleMMError(f"the {code} timing run failed (exit {done.returncode}): {last} (full output: {log})")
    return record


def run_steps(args):
    data_root(args.data_path, args.dataset)
    if not (os.path.isfile(args.official_python) and os.access(args.official_python, os.X_OK)):
        raise MissingFileError(f"--official_python {args.official_python}: not an executable file; pass the Python "
                               f"of the environment that runs the official code.")
    if not os.path.isfile(os.path.join(args.official_src, "utils", "quick_start.py")):
        raise MissingFileError(f"--official_src {args.official_src}: no utils/quick_start.py there; pass the src/ "
                          f"folder of the CPU-patched official MuSTRec copy (docs/benchmarks/mustrec.md).")
    from recbole_mm.benchmark.runner import code_version, host_facts

    host, code_at = host_facts(args.threads), code_version()
    for round_index in range(args.rounds):
        for name, code, overrides, environment in STEP_VARIANTS:
            load_before = os.getloadavg()
            record = time_steps(args, code, overrides or {}, environment)
            row = {"round": round_index, "variant": name, "code": code, "threads": args.threads,
                   "batches": args.batches, "step_s": record["step_s"], "step_cpu_s": record["step_cpu_s"],
                   "batch_size": record.get("batch_size", 512), "batches_per_epoch": record["batches_per_epoch"],
                   "peak_rss_gib": round(record["peak_rss_gib"], 2), "load_before": load_before,
                   "load_after": os.getloadavg(), "environment": environment,
                   "host": host, "code_version": code_at,
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            append_record(args.out, row)


def read_step_rows(path):
    """The rows of a ``steps`` results file; one error line for anything else."""
    if not os.path.isfile(path):
        raise MissingFileError(f"--results {path}: no such file; pass the --out file of the steps command.")
    needed = {"variant", "step_cpu_s", "step_s", "batches_per_epoch", "peak_rss_gib", "load_before", "load_after",
              "host", "code_version", "threads", "batches", "date"}
    try:
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--results {path}: not JSON lines ({error}); pass the --out file of the steps command.")
    if not rows:
        raise ConfigError(f"--results {path}: no rows; run the steps command first.")
    missing = sorted(set().union(*[needed - set(row) for row in rows]))
    if missing:
        raise ConfigError(f"--results {path}: rows lack {', '.join(missing)}; pass the --out file of the steps "
                          f"command.")
    return rows


def steps_report(args):
    rows = read_step_rows(args.results)
    by_variant = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    mean_cpu = {name: statistics.mean(r["step_cpu_s"] for r in group) for name, group in by_variant.items()}
    loads = [v for row in rows for v in (row["load_before"][0], row["load_after"][0])]
    first = rows[0]
    lines = [
        "# MuSTRec training step: recbole_mm and the official code in one run",
        "",
        f"Generated by `python benchmarks/bench_mustrec_vs_official.py steps-report` from `{args.results}`.",
        f"Machine: {first['host']['cpu']}, {first['host']['cores']} cores, no GPU; code {first['code_version']}; "
        f"{first['threads']} torch thread per process; runs one after the "
        f"other, nothing else running (load average {min(loads):.2f}-{max(loads):.2f} around the runs); "
        f"{rows[0]['date'][:10]}. Each run: {first['batches']} training steps of {first['batch_size']} after one "
        f"warm-up step, paper defaults on both sides, the Baby-scale synthetic set; a step is zero_grad, loss, "
        f"backward and Adam (the official step covers the same: both losses, backward, Adam). CPU seconds per step, "
        f"mean over {len(by_variant[first['variant']])} rounds.",
        "",
        "| variant | step CPU s (per round) | mean | wall s mean | batches / epoch | epoch CPU s (mean x batches) | peak RSS GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, group in by_variant.items():
        per_round = ", ".join(f"{r['step_cpu_s']:.3f}" for r in group)
        wall = statistics.mean(r["step_s"] for r in group)
        batches = group[0]["batches_per_epoch"]
        lines.append(f"| {name} | {per_round} | **{mean_cpu[name]:.3f}** | {wall:.3f} | {batches} | "
                     f"{mean_cpu[name] * batches:.0f} | {max(r['peak_rss_gib'] for r in group):.2f} |")
    ours, official = mean_cpu.get("recbole_mm"), mean_cpu.get("official")
    same = mean_cpu.get("official, allocator set as ours")
    lines += ["", "Ratios of mean step CPU time, ours / official:", ""]
    if ours and official:
        lines.append(f"- both as shipped (ours sets the allocator itself, the official code runs with glibc's "
                     f"defaults): **{ours / official:.3f}**")
    if ours and same:
        lines.append(f"- both with the same allocator setting: **{ours / same:.3f}**")
    plain = mean_cpu.get("recbole_mm, cpu_keep_freed_memory: false")
    if plain and official:
        lines.append(f"- both with glibc's defaults: **{plain / official:.3f}**")
    text = "\n".join(lines) + "\n"
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


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
    steps = sub.add_parser("steps", help="time both codes' training steps in one run, round after round")
    steps.add_argument("--data_path", required=True, help="folder holding <dataset>/ (docs/datasets.md)")
    steps.add_argument("--dataset", default="babyscale")
    steps.add_argument("--official_src", required=True, help="src/ of the CPU-patched official copy")
    steps.add_argument("--official_python", default=sys.executable, help="the Python that runs the official code")
    steps.add_argument("--batches", type=int, default=20)
    steps.add_argument("--rounds", type=int, default=2)
    steps.add_argument("--threads", type=int, default=1)
    steps.add_argument("--out", default="mustrec_steps.jsonl")
    report = sub.add_parser("steps-report", help="markdown table of a steps results file")
    report.add_argument("--results", required=True)
    report.add_argument("--out", required=True)
    args = parser.parse_args()
    {"ours": run_ours, "compare": compare, "steps": run_steps, "steps-report": steps_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
