"""Multi-process (DDP) training through RecBole's distributed path, on CPU (gloo) or GPU (nccl).

Two ways to start it, both ending in :func:`recbole_mm.quick_start.run_recbole_mm` once per rank:

* ``python run_recbole_mm.py --nproc=2 ...`` (or :func:`recbole_mm.launcher.run_distributed`): RecBole's own scheme,
  ``torch.multiprocessing.spawn`` with ``local_rank``/``world_size``/``ip``/``port``/``nproc``/
  ``offset`` in the config dict and a ``tcp://ip:port`` rendezvous;
* ``torchrun --nproc_per_node=N [--nnodes=M ...] run_recbole_mm.py ...``: torchrun's environment
  (``LOCAL_RANK``, ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) is read by
  :func:`init_device` and the process group starts with ``env://``.

RecBole 1.2.1 only runs DDP with nccl on GPUs: its ``Config._init_device`` asserts one GPU id per
process, hard-codes the nccl backend and calls ``torch.cuda.set_device`` (docs/scaling.md, "What
RecBole 1.2.1 does and what we change"). Four fixes make it run on CPU as well, applied by
``recbole_mm.config.Config._init_device`` and the trainer mixin in ``recbole_mm.trainer`` (lines
marked ``# distributed:``):

1. :func:`init_device`: gloo on CPU (nccl on CUDA, or ``dist_backend``), no GPU-count assertion,
   ``torch.cuda.set_device`` only on GPU;
2. :func:`wrap_ddp`: ``DistributedDataParallel`` without ``device_ids`` on CPU, and without the
   sparse buffers (graphs) that DDP cannot broadcast;
3. :func:`broadcast_checkpoint_name`: rank 0's time-stamped checkpoint name used by every rank;
4. :func:`barrier`: every rank waits after rank 0 saved a checkpoint before anyone reads it.

Data: RecBole's loaders give each rank a ``DistributedSampler`` shard; the training batch is split
(``train_batch_size`` is the global batch) and gradients are averaged, evaluation metrics are
gathered from all ranks. See ``docs/scaling.md`` for measured agreement with one process.
"""
import contextlib
import os
import re
import socket

from recbole_mm.errors import ConfigError, RecBoleMMError

TORCHRUN_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(ConfigError):
    """A distributed setup that cannot work; the message says the fix."""


def launched_by_torchrun(environ=None):
    environ = os.environ if environ is None else environ
    return all(name in environ for name in TORCHRUN_VARIABLES)


def torchrun_settings(environ=None):
    """Config values equivalent to RecBole's spawn keys, read from torchrun's environment."""
    environ = os.environ if environ is None else environ
    local_rank, rank = int(environ["LOCAL_RANK"]), int(environ["RANK"])
    world_size = int(environ["WORLD_SIZE"])
    return {"local_rank": local_rank, "world_size": world_size,
            "nproc": int(environ.get("LOCAL_WORLD_SIZE", world_size)), "offset": rank - local_rank,
            "ip": environ["MASTER_ADDR"], "port": environ["MASTER_PORT"], "dist_init_method": "env://"}


def choose_backend(requested, use_cuda):
    """``dist_backend`` (auto | gloo | nccl) → backend name; nccl needs CUDA."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        return "nccl" if use_cuda else "gloo"
    if requested not in ("gloo", "nccl"):
        raise DistributedError(f"config key 'dist_backend' must be auto, gloo or nccl, got '{requested}'.")
    if requested == "nccl" and not use_cuda:
        raise DistributedError("dist_backend nccl needs CUDA GPUs, and none is usable here (use_gpu, gpu_id, "
                               "torch.cuda). Fix: dist_backend: gloo (or auto) for CPU training.")
    return requested


def init_device(config_dict):
    """Distributed replacement of RecBole's ``Config._init_device``.

    Returns False (nothing done) for a single-process run, so the caller falls back to RecBole's
    own code; otherwise starts the process group once and fills ``device``, ``single_spec``.
    """
    import torch
    import torch.distributed as dist

    if "local_rank" not in config_dict:
        if not launched_by_torchrun():
            return False
        config_dict.update(torchrun_settings())
    gpu_id = config_dict.get("gpu_id", "")
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id if gpu_id is not None else "")
    config_dict["gpu_id"] = gpu_id
    nproc = int(config_dict.get("nproc") or config_dict["world_size"])
    if len([g for g in gpu_id.split(",") if g]) >= nproc:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id  # RecBole's behaviour when gpu_id names a GPU per rank
    use_cuda = bool(config_dict.get("use_gpu", True)) and gpu_id != "" and torch.cuda.is_available()
    backend = choose_backend(config_dict.get("dist_backend"), use_cuda)
    local_rank = int(config_dict["local_rank"])
    if backend == "nccl" and torch.cuda.device_count() <= local_rank:
        raise DistributedError(f"rank {local_rank} needs GPU {local_rank} but {torch.cuda.device_count()} are "
                               "visible. Fix: one GPU per process (gpu_id '0,1,...', fewer processes) or gloo.")
    if not dist.is_initialized():
        init_method = config_dict.get("dist_init_method") or f"tcp://{config_dict['ip']}:{config_dict['port']}"
        dist.init_process_group(backend=backend, init_method=init_method,
                                rank=local_rank + int(config_dict.get("offset") or 0),
                                world_size=int(config_dict["world_size"]), timeout=collective_timeout(config_dict))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        config_dict["device"] = torch.device("cuda", local_rank)
    else:
        config_dict["device"] = torch.device("cpu")
    config_dict["dist_backend"] = backend
    config_dict["single_spec"] = False
    # RecBole creates these with exists-check-then-makedirs: ranks racing there crash (FileExistsError)
    for folder in (os.path.join("log", str(config_dict.get("model"))), config_dict.get("checkpoint_dir")):
        if folder:
            os.makedirs(folder, exist_ok=True)
    if local_rank + int(config_dict.get("offset") or 0) != 0:  # as RecBole: only rank 0 talks
        config_dict.update(state="error", show_progress=False, verbose=False)
    return True


def collective_timeout(config_dict):
    """``dist_timeout`` (seconds) as the process group's timeout: how long a rank waits in one
    collective for the others before it raises instead of hanging."""
    import datetime

    seconds = config_dict.get("dist_timeout")
    seconds = 1800 if seconds is None else seconds
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise DistributedError(f"config key 'dist_timeout' must be a positive number of seconds, got {seconds!r}.")
    return datetime.timedelta(seconds=seconds)


def mean_denominator(count, device=None):
    """What to divide a sum of ``count`` per-term losses by so that DDP's gradient average is the
    gradient of the mean over every term of the global batch: ``count`` in one process, the mean
    count per rank under DDP (for losses whose ranks hold unequal numbers of terms, e.g. valid
    positions). Under DDP every rank must call it for every batch: it all-reduces the count."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    total = torch.tensor([float(count)], device=device)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def is_distributed(config):
    return not config["single_spec"]


def global_rank(config):
    """The rank across every machine (``local_rank`` restarts at 0 on each machine)."""
    return int(config["local_rank"] or 0) + int(config["offset"] or 0)


def is_main_process(config):
    """True for a single process and for global rank 0: the one process that writes shared files."""
    return not is_distributed(config) or global_rank(config) == 0


class RankLostError(RecBoleMMError):
    """Another rank of a distributed job died or stopped answering; this rank stops too."""


def is_peer_failure(error):
    """True for the errors a collective raises when another rank is gone: its connection closed
    (killed process, lost machine) or nothing arrived within ``dist_timeout``."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", ())
    text = str(error)
    return isinstance(error, backend_error) or (isinstance(error, RuntimeError) and any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
                                      "timed out", "Broken pipe", "NCCL communicator was aborted")))


@contextlib.contextmanager
def stop_cleanly_when_a_rank_is_lost(config):
    """Turn a collective's low-level failure into one :class:`RankLostError` line naming the
    rank, the cause and what to do (a multi-line gloo/NCCL trace otherwise)."""
    try:
        yield
    except RuntimeError as err:
        if not is_distributed(config) or not is_peer_failure(err):
            raise
        detail = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(err).split()))  # drop gloo's source location
        detail = detail.split(". ")[0][:200]
        raise RankLostError(
            f"distributed training stopped on rank {global_rank(config)} of {config['world_size']}: another rank "
            f"died or did not answer within dist_timeout={config['dist_timeout']} s ({detail}). Its log, or "
            "torchrun's summary, names it. Fix: rerun the job, adding --resume=CHECKPOINT (printed at the start) "
            "to continue from the last finished epoch.") from None


@contextlib.contextmanager
def defer_ddp(config):
    """Hide the distributed flag while RecBole's trainer ``__init__`` runs (it would wrap DDP with
    ``device_ids=[local_rank]``, which fails for CPU modules); :func:`wrap_ddp` does it after."""
    distributed = is_distributed(config)
    if distributed:
        config["single_spec"] = True
    try:
        yield distributed
    finally:
        if distributed:
            config["single_spec"] = False


def wrap_ddp(trainer):
    """RecBole's DDP wrapping, with ``device_ids`` only for CUDA modules (fix 2)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    config = trainer.config
    # Sparse buffers (graphs) cannot be broadcast; every rank builds them from the same data anyway.
    sparse = [name for name, buffer in trainer.model.named_buffers() if buffer.layout != torch.strided]
    if sparse:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(trainer.model, sparse)
    if config["device"].type == "cuda":
        trainer.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model)
        trainer.distributed_model = DistributedDataParallel(trainer.model, device_ids=[config["local_rank"]])
    else:
        trainer.distributed_model = DistributedDataParallel(trainer.model)


def broadcast_checkpoint_name(trainer):
    """Every rank uses rank 0's checkpoint file name (it holds a per-process time stamp; fix 3)."""
    import torch.distributed as dist

    holder = [trainer.saved_model_file]
    dist.broadcast_object_list(holder, src=0)
    trainer.saved_model_file = holder[0]


def setup_trainer(trainer, distributed):
    """Called at the end of the trainer mixin's ``__init__`` (fixes 2 and 3)."""
    if distributed:
        wrap_ddp(trainer)
        if hasattr(trainer, "saved_model_file"):
            broadcast_checkpoint_name(trainer)


def barrier(config):
    """Wait for every rank (fix 4: after rank 0 saved a checkpoint). No-op for one process."""
    if is_distributed(config):
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------ spawning
def free_port(host="localhost"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return str(sock.getsockname()[1])
