"""Distributed (DDP) training through RecBole's path on CPU: backend choice, torchrun's
environment, and 1- vs 2-process runs of a tiny SASRec on ml-100k compared metric by metric.

Why the runs can be compared: the whole training split (~7.5k sequences of the 305 ml-100k users
with <= 40 interactions) fits in ONE batch and dropout is off, so one process and two processes
(half a batch each, gradients averaged by DDP, parameters broadcast from rank 0) take the same
optimisation steps. What remains: float summation order, and RecBole's DistributedSampler pads 305
users to 306 (one user counted twice in the gathered metrics). Tolerance: 3 users' worth, 3/305.
"""
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from conftest import ml100k_config
from recbole_mm import distributed, launcher
from recbole_mm.distributed import DistributedError
from recbole_mm.quick_start import run_recbole_mm
from recbole_mm.trainer import load_checkpoint

N_EVAL_USERS = 305  # ml-100k users with <= 40 interactions
TOLERANCE = 3 / N_EVAL_USERS
DETERMINISTIC = dict(hidden_size=16, inner_size=32, n_layers=1, n_heads=1, MAX_ITEM_LIST_LENGTH=10,
                     train_batch_size=8192, epochs=2, learning_rate=0.01, hidden_dropout_prob=0.0,
                     attn_dropout_prob=0.0, user_inter_num_interval="[0,40]", save_dataset=False)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        return run_recbole_mm(model="SASRec", dataset="ml-100k", config_dict=ml100k_config(tmp_path, **DETERMINISTIC))


def assert_close(result, reference, tolerance):
    for split in ("best_valid_result", "test_result"):
        assert set(result[split]) == set(reference[split])
        for key, value in reference[split].items():
            assert abs(result[split][key] - value) <= tolerance, (split, key, result[split][key], value)


# ------------------------------------------------------------------ unit
def test_backend_choice():
    assert distributed.choose_backend(None, use_cuda=False) == "gloo"
    assert distributed.choose_backend("auto", use_cuda=True) == "nccl"
    assert distributed.choose_backend("gloo", use_cuda=True) == "gloo"
    with pytest.raises(DistributedError, match="nccl needs CUDA GPUs.*dist_backend: gloo"):
        distributed.choose_backend("nccl", use_cuda=False)
    with pytest.raises(DistributedError, match="'dist_backend' must be auto, gloo or nccl, got 'mpi'"):
        distributed.choose_backend("mpi", use_cuda=False)


def test_torchrun_environment_maps_to_recbole_keys():
    env = {"LOCAL_RANK": "1", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert distributed.launched_by_torchrun(env)
    assert not distributed.launched_by_torchrun({"LOCAL_RANK": "0"})  # a stray variable is not torchrun
    assert distributed.torchrun_settings(env) == {
        "local_rank": 1, "world_size": 8, "nproc": 4, "offset": 4,  # second machine of two, 4 ranks each
        "ip": "10.0.0.1", "port": "29500", "dist_init_method": "env://"}


def test_only_global_rank_zero_writes_shared_files():
    single = {"single_spec": True, "local_rank": 0, "offset": 0}
    assert distributed.is_main_process(single)
    # torchrun --nnodes=2 --nproc_per_node=1: both machines' processes have local rank 0
    assert distributed.is_main_process({"single_spec": False, "local_rank": 0, "offset": 0})
    assert not distributed.is_main_process({"single_spec": False, "local_rank": 0, "offset": 1})
    assert distributed.global_rank({"single_spec": False, "local_rank": 1, "offset": 4}) == 5


def test_dist_timeout_becomes_the_process_group_timeout():
    import datetime

    assert distributed.collective_timeout({"dist_timeout": 5}) == datetime.timedelta(seconds=5)
    assert distributed.collective_timeout({}) == datetime.timedelta(minutes=30)  # torch's default
    for bad in (0, -1, "soon", True):
        with pytest.raises(DistributedError, match="'dist_timeout' must be a positive number of seconds"):
            distributed.collective_timeout({"dist_timeout": bad})


def test_lost_rank_becomes_one_error_line():
    config = {"single_spec": False, "local_rank": 0, "offset": 1, "world_size": 2, "dist_timeout": 5}
    gloo = RuntimeError("[/src/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:1: Connection reset by peer. "
                        "This is typically caused by a remote worker hanging\nmore")
    with pytest.raises(distributed.RankLostError) as caught:
        with distributed.stop_cleanly_when_a_rank_is_lost(config):
            raise gloo
    message = str(caught.value)
    assert message.startswith("distributed training stopped on rank 1 of 2: another rank died or did not answer "
                              "within dist_timeout=5 s (Read error [127.0.0.1]:1: Connection reset by peer)")
    assert "\n" not in message and "--resume=" in message
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors pass through unchanged
        with distributed.stop_cleanly_when_a_rank_is_lost(config):
            raise RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="Connection reset"):  # one process: nothing to translate
        with distributed.stop_cleanly_when_a_rank_is_lost({**config, "single_spec": True}):
            raise gloo


def test_mean_denominator_makes_the_averaged_gradient_the_global_mean(monkeypatch):
    """Rank 0 holds 1 term, rank 1 holds 3: the mean over ranks of each rank's gradient of
    sum/denominator equals the gradient of the mean over all 4 terms (per-rank means would
    weigh rank 0's term 3 times too much)."""
    terms = [torch.tensor([2.0]), torch.tensor([1.0, 5.0, 3.0])]
    weight = torch.ones(1, requires_grad=True)
    assert distributed.mean_denominator(3) == 3  # one process: the plain count
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    grads = []
    for rank, mine in enumerate(terms):
        other = len(terms[1 - rank])
        monkeypatch.setattr(dist, "all_reduce", lambda tensor, other=other: tensor.add_(other))
        weight.grad = None
        ((weight * mine).sum() / distributed.mean_denominator(len(mine))).backward()
        grads.append(weight.grad.clone())
    averaged = sum(grads) / 2  # what DDP does
    assert torch.allclose(averaged, torch.cat(terms).mean().reshape(1))
    assert not torch.allclose(sum(t.mean() for t in terms).reshape(1) / 2, averaged)


def test_run_distributed_rejects_bad_requests(monkeypatch):
    with pytest.raises(DistributedError, match="nproc must be a positive integer"):
        launcher.run_distributed("SASRec", "ml-100k", nproc=0)
    for name, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedError, match="already started by torchrun"):
        launcher.run_distributed("SASRec", "ml-100k", nproc=2)


class _GraphModel(torch.nn.Module):
    """Like our graph models: a sparse adjacency buffer next to a dense one."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        self.register_buffer("item_graph", torch.eye(3).to_sparse())
        self.register_buffer("dense", torch.ones(2))

    def forward(self, x):
        return self.linear(torch.sparse.mm(self.item_graph, x))


def test_ddp_wrapper_on_cpu_skips_sparse_buffers():
    dist.init_process_group("gloo", init_method=f"tcp://localhost:{distributed.free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="sparse"):  # what plain DDP does with a sparse buffer
            DistributedDataParallel(_GraphModel())(torch.ones(3, 3))
        trainer = SimpleNamespace(model=_GraphModel(), config={"device": torch.device("cpu"), "local_rank": 0})
        distributed.wrap_ddp(trainer)
        assert trainer.distributed_model.device_ids is None  # CPU module: no device_ids
        assert trainer.distributed_model(torch.ones(3, 3)).shape == (3, 3)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ end to end
def test_torchrun_environment_runs_ddp_in_process(tmp_path, in_tmp, monkeypatch, single_process):
    """One rank started 'by torchrun' (world size 1): the whole DDP path (gloo group, DDP wrapper,
    checkpoint-name broadcast, barrier, metric all_gather) runs and matches the plain run."""
    for name, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "localhost", "MASTER_PORT": distributed.free_port()}.items():
        monkeypatch.setenv(name, value)
    result = run_recbole_mm(model="SASRec", dataset="ml-100k", config_dict=ml100k_config(tmp_path, **DETERMINISTIC))
    assert not dist.is_initialized()  # the group is torn down after the run
    assert os.path.dirname(result["checkpoint"]) == str(tmp_path / "saved")
    config = load_checkpoint(result["checkpoint"])["config"]
    assert config["single_spec"] is False and config["dist_backend"] == "gloo" and config["world_size"] == 1
    assert_close(result, single_process, tolerance=1e-4)  # one rank, no padding: same numbers


def test_two_process_gloo_matches_one_process(tmp_path, in_tmp, single_process):
    result = launcher.run_distributed("SASRec", "ml-100k", nproc=2,
                                         config_dict=ml100k_config(tmp_path, **DETERMINISTIC))
    assert result is not None
    assert_close(result, single_process, tolerance=TOLERANCE)
    # rank 0 wrote the one checkpoint both ranks read (and its resumable state)
    checkpoint = os.path.basename(result["checkpoint"])
    assert sorted(os.listdir(tmp_path / "saved")) == sorted([checkpoint, checkpoint.replace(".pth", "-last.pth")])
