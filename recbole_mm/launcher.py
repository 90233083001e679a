"""Multi-process launcher: ``python run_recbole_mm.py --nproc=N`` (RecBole's ``run(nproc=...)``).

Checks the configuration once in the parent, then starts ``nproc`` processes with
``torch.multiprocessing.spawn``; each runs :func:`recbole_mm.quick_start.run_recbole_mm` with its
``local_rank``. What happens inside a rank (process group, DDP wrapping, checkpoint name, barriers)
is in :mod:`recbole_mm.distributed`, which this module uses and which imports nothing back.
"""
import os

from recbole_mm.distributed import DistributedError, choose_backend, free_port, launched_by_torchrun
from recbole_mm.errors import RecBoleMMError, one_line

_USER_ERROR = "user-error"


def _worker(local_rank, model, dataset, config_file_list, config_dict, saved, parse_argv, queue):
    import torch

    from recbole_mm.quick_start import run_recbole_mm

    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(config_dict["nproc"])))
    try:
        run_recbole_mm(model=model, dataset=dataset, config_file_list=config_file_list,
                       config_dict={**config_dict, "local_rank": local_rank}, saved=saved, parse_argv=parse_argv,
                       queue=queue)
    except RecBoleMMError as err:  # the parent raises it again: one error line, no child traceback
        queue.put((_USER_ERROR, one_line(err)))
        raise SystemExit(2) from None


def run_distributed(model, dataset, config_file_list=None, nproc=2, config_dict=None, saved=True,
                    parse_argv=False, world_size=-1, ip="localhost", port=None, group_offset=0):
    """Train and evaluate with ``nproc`` processes on this machine (RecBole's ``run(nproc=...)``).

    ``world_size``/``ip``/``port``/``group_offset`` span several machines the RecBole way (start
    this on each with its own ``group_offset``); torchrun is the simpler way to do that. Returns
    rank 0's result dict, like :func:`recbole_mm.quick_start.run_recbole_mm`.
    """
    import torch
    import torch.multiprocessing as mp

    from recbole_mm.config import Config
    from recbole_mm.quick_start import check_dataset_files

    if not isinstance(nproc, int) or nproc < 1:
        raise DistributedError(f"nproc must be a positive integer, got {nproc!r}.")
    if launched_by_torchrun():
        raise DistributedError("already started by torchrun, which starts the processes itself. "
                               "Fix: drop --nproc, or run without torchrun.")
    # Fail here, once, on a bad config or missing data rather than in every child.
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, parse_argv=parse_argv)
    check_dataset_files(config)
    use_cuda = config["device"].type == "cuda"
    choose_backend(config["dist_backend"], use_cuda)
    if use_cuda and torch.cuda.device_count() < nproc:
        raise DistributedError(f"nccl needs one GPU per process: nproc={nproc} but {torch.cuda.device_count()} "
                               "GPU(s) are visible. Fix: gpu_id naming one GPU per process (e.g. '0,1'), fewer processes, "
                               "or use_gpu: False (gloo on CPU).")
    world_size = nproc if world_size is None or world_size <= 0 else world_size
    spawn_config = {**(config_dict or {}), "world_size": world_size, "ip": ip, "port": port or free_port(ip),
                    "nproc": nproc, "offset": group_offset}
    queue = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_worker, args=(model, dataset, config_file_list, spawn_config, saved, parse_argv, queue),
                 nprocs=nproc, join=True)
    except (mp.ProcessExitedException, mp.ProcessRaisedException):
        for item in _drain(queue):
            if isinstance(item, tuple) and item[0] == _USER_ERROR:
                raise RecBoleMMError(item[1]) from None
        raise
    results = [item for item in _drain(queue) if isinstance(item, dict)]
    return results[0] if results else None


def _drain(queue):
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items
