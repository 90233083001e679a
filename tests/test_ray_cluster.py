"""Ray on a two-node cluster: search trials and benchmark cells spread over both nodes, and a
node killed mid-run loses only its own trial or cell.

The cluster is Ray's own test utility (``ray.cluster_utils.Cluster``) on this machine, on
loopback addresses only: a head node on 127.0.0.1 (1 CPU, custom resource ``node_a``) and a
worker node on 127.0.0.2 (1 CPU, ``node_b``), each with its own raylet and worker processes, as
two machines would have their own addresses. ``run_hyper.py`` and ``run_benchmark.py`` run as
separate driver processes on 127.0.0.1 attached with ``--ray_address``, as a user attaches them
to a real cluster from its head machine (a driver joins the raylet of its own address: were both
nodes on one address, it could join node_b's and die with it). A trial or cell asks for 1 CPU,
so two run at once, necessarily one per node. Killing a node is :meth:`Cluster.remove_node`
without grace: its raylet and workers are killed.

Ray replaces 127.0.0.1 in an address by the machine's outward IP address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (then it keeps loopback); the module sets it for the nodes
and the drivers, so nothing listens beyond loopback.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO_ROOT, TINY_PROTOCOL, shutdown_ray_cluster, write_tiny_dataset
from recbole_mm.trainer import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore")
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
HEAD_IP, SECOND_IP = "127.0.0.1", "127.0.0.2"  # Linux answers on all of 127.0.0.0/8
WAIT_S = 180  # upper bound of every wait below (a broken run fails instead of hanging)


class TwoNodes:
    """A head node ``node_a`` and a worker node ``node_b`` (killed and re-added by tests)."""

    def __init__(self, temp_dir):
        from ray.cluster_utils import Cluster

        self.node_args = {"temp_dir": temp_dir, "num_cpus": 1}
        self.cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
            **self.node_args, "node_ip_address": HEAD_IP, "resources": {"node_a": 1}, "include_dashboard": False})
        self.address = self.cluster.address
        self.node_b = None
        self.add_node_b()

    def add_node_b(self):
        if self.node_b is None:
            self.node_b = self.cluster.add_node(**self.node_args, node_ip_address=SECOND_IP, resources={"node_b": 1})
            self.cluster.wait_for_nodes()

    def kill_node_b(self):
        self.cluster.remove_node(self.node_b, allow_graceful=False)
        self.node_b = None

    def node_ids(self):
        """{'node_a': Ray node id, 'node_b': ...} of the nodes alive now."""
        ids = {}
        for node in self.cluster.global_state.node_table():
            for label in ("node_a", "node_b"):
                if node["Alive"] and label in node["Resources"]:
                    ids[label] = node["NodeID"]
        return ids

    def pids_on_node_b(self, marker):
        """Processes under node_b's raylet whose command line contains ``marker``."""
        import psutil

        raylet = psutil.Process(self.node_b.all_processes["raylet"][0].process.pid)
        found = []
        for process in raylet.children(recursive=True):
            try:
                if marker in " ".join(process.cmdline()):
                    found.append(process.pid)
            except psutil.Error:
                pass
        return found

    def wait_until_running_on_node_b(self, marker, driver):
        deadline = time.time() + WAIT_S
        while time.time() < deadline and driver.poll() is None:
            pids = self.pids_on_node_b(marker)
            if pids:
                return pids
            time.sleep(0.2)
        raise AssertionError(f"nothing matching '{marker}' ran on node_b (driver exit code {driver.poll()})")

    def shutdown(self):
        shutdown_ray_cluster(self.cluster)


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    if not sys.platform.startswith("linux"):
        pytest.skip("a second loopback address (127.0.0.2) is a Linux feature")
    temp_dir = tempfile.mkdtemp(prefix="rmm-ray-")  # short: Ray's socket paths must stay under 108 bytes
    with pytest.MonkeyPatch.context() as patch:
        for name, value in LOOPBACK.items():
            patch.setenv(name, value)
        nodes = TwoNodes(temp_dir)
        try:
            yield nodes
        finally:
            nodes.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def workspace(tmp_path, cluster):
    """A tiny dataset, a tiny protocol and node_b alive; relative paths from tmp_path."""
    cluster.add_node_b()
    write_tiny_dataset(str(tmp_path / "data"))
    (tmp_path / "tiny.yaml").write_text(TINY_PROTOCOL)
    return tmp_path


def start(script, args, cwd):
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": REPO_ROOT}
    return subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(driver):
    try:
        output = driver.communicate(timeout=WAIT_S)[0]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    return driver.returncode, output


def search(cluster, workspace, values):
    (workspace / "lr.hyper").write_text(f"learning_rate choice {values}\n")
    return start("run_hyper.py", ["--model=SASRec", "--dataset=tiny", "--data_path=data", "--config_files=tiny.yaml",
                                  "--params_file=lr.hyper", "--tool=ray", "--algo=exhaustive", "--cpus_per_trial=1",
                                  "--gpus_per_trial=0", f"--ray_address={cluster.address}",
                                  "--output_file=out/search.json"], workspace)


def benchmark(cluster, workspace, seeds):
    return start("run_benchmark.py", ["--models=SASRec", "--datasets=tiny", f"--seeds={seeds}",
                                      "--config_files=tiny.yaml", "--data_path=data", "--workers=2", "--threads=1",
                                      f"--ray_address={cluster.address}", "--out=results/grid.jsonl"], workspace)


# ------------------------------------------------------------------ run_hyper.py
def test_search_trials_spread_over_both_nodes_with_absolute_paths(cluster, workspace):
    ids = cluster.node_ids()
    code, output = finish(search(cluster, workspace, [0.001, 0.01]))
    assert code == 0, output
    saved = json.loads((workspace / "out" / "search.json").read_text())
    assert [t["status"] for t in saved["trials"]] == ["ok", "ok"]
    assert {(t["node"]["id"], t["node"]["ip"]) for t in saved["trials"]} == {(ids["node_a"], HEAD_IP),
                                                                             (ids["node_b"], SECOND_IP)}
    # each trial ran in Ray's trial folder, yet read the data given relative to the driver's folder
    for trial in saved["trials"]:
        folder = workspace / "out" / "search" / "checkpoints" / trial["trial"]
        (checkpoint,) = [f for f in os.listdir(folder) if f.endswith(".pth") and not f.endswith("-last.pth")]
        config = load_checkpoint(str(folder / checkpoint))["config"]
        assert config["data_path"] == str(workspace / "data" / "tiny")  # RecBole appends the dataset name


def test_search_loses_only_the_trial_of_a_killed_node(cluster, workspace):
    ids = cluster.node_ids()
    driver = search(cluster, workspace, [0.001, 0.003, 0.01])
    try:
        cluster.wait_until_running_on_node_b("ImplicitFunc", driver)  # a trial's actor on node_b
        cluster.kill_node_b()
    finally:
        code, output = finish(driver)
    assert code == 0, output  # the search ended with the other trials
    saved = json.loads((workspace / "out" / "search.json").read_text())
    failed = [t for t in saved["trials"] if t["status"] != "ok"]
    assert len(failed) == 1 and failed[0]["error"].startswith("trial lost: its Ray worker or node died")
    assert "\n" not in failed[0]["error"]
    ok = [t for t in saved["trials"] if t["status"] == "ok"]
    assert len(ok) == 2 and {t["node"]["id"] for t in ok} == {ids["node_a"]}
    assert saved["best"]["trial"] in {t["trial"] for t in ok}


# ------------------------------------------------------------------ run_benchmark.py
def test_benchmark_cells_spread_over_both_nodes(cluster, workspace):
    ids = cluster.node_ids()
    code, output = finish(benchmark(cluster, workspace, "1,2"))
    assert code == 0, output
    rows = [json.loads(line) for line in (workspace / "results" / "grid.jsonl").read_text().splitlines()]
    assert sorted((r["seed"], r["status"]) for r in rows) == [(1, "ok"), (2, "ok")]
    assert {r["host"]["ray_node"] for r in rows} == {ids["node_a"], ids["node_b"]}


def test_benchmark_cell_of_a_killed_node_fails_and_reruns(cluster, workspace):
    import psutil

    ids = cluster.node_ids()
    driver = benchmark(cluster, workspace, "1,2")
    try:
        cells = cluster.wait_until_running_on_node_b("recbole_mm.benchmark.cell", driver)
        cluster.kill_node_b()
    finally:
        code, output = finish(driver)
    assert code == 1, output  # one cell failed
    # the killed node's cell process died with its Ray worker instead of training on as an orphan
    deadline = time.time() + 30
    while time.time() < deadline and any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                                         for pid in cells):
        time.sleep(0.2)
    assert not [pid for pid in cells if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    rows = [json.loads(line) for line in (workspace / "results" / "grid.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 2 and len(failed) == 1
    assert failed[0]["error"].startswith("cell lost: its Ray worker or node died")
    (ok,) = [r for r in rows if r["status"] == "ok"]
    assert ok["host"]["ray_node"] == ids["node_a"]
    # the next run retries the failed cell only
    code, output = finish(benchmark(cluster, workspace, "1,2"))
    assert code == 0, output
    rows = [json.loads(line) for line in (workspace / "results" / "grid.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[-1]["key"] == failed[0]["key"] and rows[-1]["status"] == "ok"
