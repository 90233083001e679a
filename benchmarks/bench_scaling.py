"""What scaling out costs on this machine (docs/benchmarks/scaling.md, docs/scaling.md).

    python benchmarks/bench_scaling.py [--part ray|torchrun|both] [--model MuSTRec]

Everything runs on one machine over loopback, on the tiny synthetic set of the tests (40 users,
40 items) with tiny models, so the numbers are the fixed costs of each engine, not training speed:

* ray: a two-node Ray cluster (Ray's ``cluster_utils.Cluster``: head on 127.0.0.1, one worker
  node on 127.0.0.2, 1 CPU each): seconds to start each node; ``run_hyper.py`` with 4 trials through
  hyperopt (in process) and through Ray Tune attached with ``--ray_address``; ``run_benchmark.py``
  with 4 cells on 2 local workers and on the two Ray nodes; whole-command wall times and the
  per-trial / per-cell times the results files record.
* torchrun: ``run_recbole_mm.py`` as one process and as ``torchrun --nnodes=2`` (two node ranks
  on 127.0.0.1, one process each, gloo): whole-command wall time, and the per-epoch training and
  evaluation times rank 0 logs (12 epochs, 3 steps an epoch).

Every process runs with OMP_NUM_THREADS=1. Prints one JSON object with the date and load.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray keeps 127.0.0.1 instead of the outward address


def run(command, cwd, env):
    start = time.time()
    done = subprocess.run([sys.executable, *command], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return round(time.time() - start, 1)


def ray_part(work, env):
    from ray.cluster_utils import Cluster

    os.environ.update(LOOPBACK)
    with open(os.path.join(work, "lr.hyper"), "w") as handle:
        handle.write("learning_rate choice [0.001,0.002,0.005,0.01]\n")
    temp = tempfile.mkdtemp(prefix="rmm-ray-")  # short: Ray's socket paths must stay under 108 bytes
    node = {"temp_dir": temp, "num_cpus": 1}
    out = {}
    start = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={**node, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    out["head_node_start_s"] = round(time.time() - start, 1)
    try:
        start = time.time()
        cluster.add_node(**node, node_ip_address="127.0.0.2")  # its own address, as a second machine
        cluster.wait_for_nodes()
        out["second_node_start_s"] = round(time.time() - start, 1)
        hyper = [os.path.join(REPO, "run_hyper.py"), "--model=SASRec", "--dataset=tiny", "--data_path=data",
                 "--config_files=tiny.yaml", "--params_file=lr.hyper", "--algo=exhaustive", "--cpus_per_trial=1",
                 "--gpus_per_trial=0"]
        for tool, extra in (("hyperopt", []), ("ray", [f"--ray_address={cluster.address}"])):
            out[f"search_{tool}_wall_s"] = run(hyper + [f"--tool={tool}", f"--output_file=o/{tool}.json"] + extra,
                                               work, env)
            with open(os.path.join(work, "o", f"{tool}.json"), encoding="utf-8") as handle:
                out[f"search_{tool}_trial_s"] = [t["seconds"] for t in json.load(handle)["trials"]]
        grid = [os.path.join(REPO, "run_benchmark.py"), "--models=SASRec", "--datasets=tiny", "--seeds=1,2,3,4",
                "--config_files=tiny.yaml", "--data_path=data", "--workers=2", "--threads=1"]
        for executor, extra in (("local", []), ("ray", [f"--ray_address={cluster.address}"])):
            out[f"grid_{executor}_wall_s"] = run(grid + [f"--out=b/{executor}.jsonl"] + extra, work, env)
            with open(os.path.join(work, "b", f"{executor}.jsonl"), encoding="utf-8") as handle:
                out[f"grid_{executor}_cell_s"] = [json.loads(line)["wall_s"] for line in handle]
    finally:
        from conftest import shutdown_ray_cluster

        start = time.time()
        shutdown_ray_cluster(cluster)
        out["cluster_shutdown_s"] = round(time.time() - start, 1)
        shutil.rmtree(temp, ignore_errors=True)
    return out


def epoch_times(log_folder):
    """Mean per-epoch training and evaluation seconds of rank 0 (the log that has them)."""
    for name in sorted(os.listdir(log_folder)):
        text = open(os.path.join(log_folder, name), encoding="utf-8").read()
        train = [float(t) for t in re.findall(r"training \[time: ([0-9.]+)s", text)]
        evaluate = [float(t) for t in re.findall(r"evaluating \[time: ([0-9.]+)s", text)]
        if train:
            return {"epochs": len(train), "train_s_per_epoch": round(sum(train[1:]) / (len(train) - 1), 3),
                    "eval_s_per_epoch": round(sum(evaluate[1:]) / (len(evaluate) - 1), 3)}
    return {}


def torchrun_part(work, env, model):
    from recbole_mm.distributed import free_port

    args = [os.path.join(REPO, "run_recbole_mm.py"), f"--model={model}", "--dataset=tiny",
            f"--data_path={work}/data", f"--config_files={work}/tiny.yaml", "--epochs=12", "--stopping_step=100",
            "--train_batch_size=64", "--state=INFO", "--hidden_dropout_prob=0.0", "--attn_dropout_prob=0.0"]
    out = {"model": model}
    one = os.path.join(work, "one")
    os.makedirs(one)
    out["one_process_wall_s"] = run(args + [f"--checkpoint_dir={one}/saved"], one, env)
    out["one_process"] = epoch_times(os.path.join(one, "log", model))
    two = os.path.join(work, "two")
    os.makedirs(two)
    port = free_port("127.0.0.1")
    start = time.time()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", *args,
                               f"--checkpoint_dir={two}/saved"],
                              cwd=two, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for rank in (0, 1)]
    codes = [node.wait() for node in nodes]
    if any(codes):
        raise RuntimeError(f"torchrun failed with exit codes {codes}")
    out["two_node_ranks_wall_s"] = round(time.time() - start, 1)
    out["two_node_ranks"] = epoch_times(os.path.join(two, "log", model))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["ray", "torchrun", "both"], default="both")
    parser.add_argument("--model", default="MuSTRec", help="model of the torchrun part")
    args = parser.parse_args()
    from conftest import TINY_PROTOCOL, write_tiny_dataset

    work = tempfile.mkdtemp(prefix="bench-scaling-")
    env = {**os.environ, **LOOPBACK, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": os.cpu_count(), "threads_per_process": 1,
              "load_before": [round(x, 1) for x in os.getloadavg()]}
    try:
        write_tiny_dataset(os.path.join(work, "data"), n_users=40, n_items=40, seed=1)
        with open(os.path.join(work, "tiny.yaml"), "w") as handle:
            handle.write(TINY_PROTOCOL)
        if args.part in ("ray", "both"):
            result["ray"] = ray_part(work, env)
        if args.part in ("torchrun", "both"):
            result["torchrun"] = torchrun_part(work, env, args.model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
