"""torchrun across two machines, played by two node ranks on 127.0.0.1 (``--nnodes=2``, one
process each, gloo on CPU), for the four models: the same metrics as one process, one graph
build shared by both ranks, one checkpoint writer, and a lost rank ending the job with one error
line instead of a hang.

Why world size 2 must reproduce world size 1 here: the training split (176 rows of 40 users, an
even number, so RecBole's DistributedSampler gives each rank 88 rows and pads none) is one batch;
dropout and Gumbel noise are off; MuSTRec's BPR negatives are keyed on (seed, epoch, user, target
position), not on the rows' order; IDAgnosticMMSR divides its per-position loss sum by the mean
count over the ranks (``recbole_mm.distributed.mean_denominator``). The gradient DDP averages is
then the one-process gradient up to float summation order, and the 40 evaluated users (even: no
padding) are split over the ranks and gathered. Tolerance: 1e-6 on every metric, logged with 8
decimals (``metric_decimal_place``). Float32 noise in the gathered averages is about 1e-8, while
one user's target moving by one place inside the top 20 moves a metric by at least
(1/19 - 1/20)/40 = 6.6e-5 (MRR@20): the test asserts that no user's ranking changed.
"""
import ast
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, write_tiny_dataset
from recbole_mm.distributed import free_port
from recbole_mm.quick_start import run_recbole_mm
from recbole_mm.trainer import load_checkpoint

COMMON = """\
epochs: 2
eval_step: 1
stopping_step: 10
train_batch_size: 4096        # the whole training split in one batch
learning_rate: 0.01
hidden_dropout_prob: 0.0
attn_dropout_prob: 0.0
seed: 2020
reproducibility: true
embedding_size: 16
inner_size: 32
n_layers: 1
n_heads: 1
MAX_ITEM_LIST_LENGTH: 10
metric_decimal_place: 8
show_progress: false
save_dataset: false
load_col: {inter: [user_id, item_id, timestamp]}
"""
MODELS = {
    "MuSTRec": "knn_k: 3\n",
    "MMSR": "code_num: 4\ncode_ae_epochs: 5\n",
    "MDSRec": "knn_k: 3\nn_centers: 4\ngumbel_noise: none\n",
    "IDAgnosticMMSR": "loss_type: CE\nfusion_heads: 2\n",
}
TOLERANCE = 1e-6
WAIT_S = 300  # upper bound of every wait (a broken run fails instead of hanging)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    info = write_tiny_dataset(str(root / "data"), n_users=40, n_items=40, seed=1)
    assert sum(len(items) - 3 for items in info["sequences"].values()) == 176  # training rows: even, no padding
    for model, extra in MODELS.items():
        (root / f"{model}.yaml").write_text(COMMON + extra)
    return root


def start_node(rank, port, model, config_file, work_dir, extra=()):
    """One machine's torchrun (static rendezvous at 127.0.0.1:port), one process on it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               os.path.join(REPO_ROOT, "run_recbole_mm.py"), f"--model={model}", "--dataset=tiny",
               f"--config_files={config_file}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO_ROOT}
    return subprocess.Popen(command, cwd=work_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def run_two_nodes(model, config_file, work_dir, extra=()):
    port = free_port("127.0.0.1")
    nodes = [start_node(rank, port, model, config_file, work_dir, extra) for rank in (0, 1)]
    try:
        return [(node.communicate(timeout=WAIT_S)[0], node.returncode) for node in nodes]
    finally:
        stop(nodes)


def stop(nodes):
    """Kill what is left of the torchrun agents and their workers."""
    import psutil

    for node in nodes:
        if node.poll() is None:
            try:
                children = psutil.Process(node.pid).children(recursive=True)
            except psutil.Error:
                children = []
            os.killpg(node.pid, signal.SIGKILL)
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass
            node.wait()


def logged_result(work_dir, model):
    """Rank 0's 'best valid' and 'test result' dicts from its log (the other rank logs errors only)."""
    folder = os.path.join(work_dir, "log", model)
    for name in os.listdir(folder):
        lines = open(os.path.join(folder, name), encoding="utf-8").read().splitlines()
        found = {}
        for line in lines:
            for label, key in (("best valid : ", "best_valid_result"), ("test result: ", "test_result")):
                if label in line:
                    found[key] = ast.literal_eval(line.split(label, 1)[1])
        if found:
            return found
    raise AssertionError(f"no log in {folder} holds the results")


def cache_entries(checkpoint_dir):
    folder = os.path.join(checkpoint_dir, "graph_cache", "tiny")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []  # temp and lock files included


@pytest.mark.parametrize("model", list(MODELS))
def test_two_nodes_reach_the_metrics_of_one_process(data, tmp_path, monkeypatch, model):
    pytest.importorskip("psutil")
    config_file = str(data / f"{model}.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    monkeypatch.chdir(one)
    reference = run_recbole_mm(model, "tiny", config_file_list=[config_file], config_dict={
        "data_path": str(data / "data"), "checkpoint_dir": str(one / "saved")})
    # both ranks start with an empty graph cache (under checkpoint_dir): they race for the same entries
    outputs = run_two_nodes(model, config_file, two, [f"--data_path={data / 'data'}",
                                                      f"--checkpoint_dir={two / 'saved'}"])
    for output, code in outputs:
        assert code == 0, output[-3000:]
    result = logged_result(two, model)
    for split in ("best_valid_result", "test_result"):
        assert set(result[split]) == set(reference[split])
        for key, value in reference[split].items():
            assert abs(result[split][key] - value) <= TOLERANCE, (split, key, result[split][key], value)
    # one checkpoint (and its resumable state), written by global rank 0 although both ranks have local rank 0
    (best,) = [f for f in os.listdir(two / "saved") if f.endswith(".pth") and not f.endswith("-last.pth")]
    assert sorted(f for f in os.listdir(two / "saved") if f.endswith(".pth")) == sorted(
        [best, best.replace(".pth", "-last.pth")])
    config = load_checkpoint(str(two / "saved" / best))["config"]
    assert config["world_size"] == 2 and config["offset"] == 0 and config["local_rank"] == 0
    # the same graph cache files as one process: one per graph, no temp or lock files left
    assert cache_entries(two / "saved") == cache_entries(one / "saved")


def _wait_for_training(work_dir, model, nodes, epoch=2):
    deadline = time.time() + WAIT_S
    folder = os.path.join(work_dir, "log", model)
    while time.time() < deadline and all(node.poll() is None for node in nodes):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if f"epoch {epoch} training" in open(os.path.join(folder, name), encoding="utf-8").read():
                return
        time.sleep(0.3)
    raise AssertionError(f"training never reached epoch {epoch}: " + str([node.poll() for node in nodes]))


def _worker_of(node):
    import psutil

    (worker,) = [p for p in psutil.Process(node.pid).children(recursive=True)
                 if "run_recbole_mm.py" in " ".join(p.cmdline())]
    return worker


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_lost_rank_ends_the_job_with_one_error_line(data, tmp_path, how):
    """Rank 1 killed (its connections close) or stopped (it holds them open and never answers,
    like a hung machine) mid-epoch: rank 0 stops with one error line, at once or after
    dist_timeout; torchrun on machine 0 then ends with a failure."""
    pytest.importorskip("psutil")
    port = free_port("127.0.0.1")
    extra = [f"--data_path={data / 'data'}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=1000",
             "--stopping_step=1000", "--train_batch_size=8", "--dist_timeout=5"]
    nodes = [start_node(rank, port, "MuSTRec", str(data / "MuSTRec.yaml"), tmp_path, extra) for rank in (0, 1)]
    try:
        _wait_for_training(tmp_path, "MuSTRec", nodes)
        worker = _worker_of(nodes[1])
        worker.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        output = nodes[0].communicate(timeout=WAIT_S)[0]
        assert nodes[0].returncode != 0
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, output[-3000:]
        assert errors[0].startswith("error: distributed training stopped on rank 0 of 2: another rank died or did "
                                    "not answer within dist_timeout=5 s")
        assert ("Timed out" if how == "stopped" else "Connection") in errors[0] and "--resume=" in errors[0]
        if how == "killed":  # torchrun on machine 1 sees its worker die and ends too
            nodes[1].communicate(timeout=WAIT_S)
            assert nodes[1].returncode != 0
    finally:
        stop(nodes)
