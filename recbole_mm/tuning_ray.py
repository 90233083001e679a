"""Ray Tune driver of :mod:`recbole_mm.tuning`: trials in parallel on a local or existing Ray cluster.

Each trial is a function trainable asking Ray for ``cpus_per_trial`` CPUs and ``gpus_per_trial``
GPUs, running :func:`recbole_mm.tuning_common.run_trial` once and reporting ``valid_score``,
``valid_<metric>`` and ``test_<metric>`` (selection uses ``valid_score`` only).
"""
import math
import os
import time

from recbole_mm.tuning_common import TrialSetup, TuningError, clean_params, hyperopt_space, run_trial


def ray_space(params, algo):
    """Ray Tune's ``param_space``: grid search for exhaustive, sampled domains otherwise.
    (``loguniform -8,0`` means exp(-8)..exp(0) as in hyperopt; Ray takes the bounds themselves.)"""
    from ray import tune

    space = {}
    for p in params:
        if p.kind == "choice":
            space[p.name] = tune.grid_search(p.values) if algo == "exhaustive" else tune.choice(p.values)
        elif p.kind == "uniform":
            space[p.name] = tune.uniform(p.low, p.high)
        elif p.kind == "quniform":
            space[p.name] = tune.quniform(p.low, p.high, p.q)
        else:
            space[p.name] = tune.loguniform(math.exp(p.low), math.exp(p.high))
    return space


def _ray_trial(sampled, setup, params):
    """Ray Tune function trainable: one trial, reported once with valid_* and test_* metrics."""
    import ray
    from ray.air import session

    import torch

    cpus = setup.extra.get("cpus_per_trial", 1)
    torch.set_num_threads(max(1, int(cpus)))
    config_dict = dict(setup.config_dict)
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    # RecBole's Config exports gpu_id as CUDA_VISIBLE_DEVICES: keep the GPUs Ray gave this trial.
    config_dict["gpu_id"] = ",".join(gpu_ids)
    config_dict["use_gpu"] = bool(gpu_ids)
    trial_setup = TrialSetup(**{**setup.__dict__, "config_dict": config_dict})
    record = run_trial(trial_setup, clean_params(params, sampled), trial_id=session.get_trial_id())
    report = {"status_ok": record["status"] == "ok", "error": record["error"] or "", "seconds": record["seconds"],
              "node": node_facts()}
    if record["status"] == "ok":
        report["valid_score"] = record["valid_score"]
        report.update({f"valid_{k}": v for k, v in record["valid"].items()})
        report.update({f"test_{k}": v for k, v in record["test"].items()})
    session.report(report)


def node_facts():
    """Where this process runs: Ray's node id (unique per node, also for several nodes on one
    host), the node's IP address and the host name."""
    import platform

    import ray

    return {"id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "host": platform.node()}


def run_ray(setup, params, algo="random", max_evals=10, bigger=True, seed=2020, cpus_per_trial=1,
            gpus_per_trial=0, address=None, max_concurrent=None, verbose=0):
    """Parallel search with Ray Tune on a local or existing (``address``) Ray cluster."""
    import ray
    from ray import air, tune

    started_here = not ray.is_initialized()
    if started_here:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=verbose > 0,
                 runtime_env={"env_vars": {"PYTHONPATH": python_path}})
    try:
        check_cluster(ray.cluster_resources(), cpus_per_trial, gpus_per_trial, attached=address is not None)
        mode = "max" if bigger else "min"
        search_alg, num_samples = None, max_evals
        if algo == "exhaustive":
            num_samples = 1  # grid_search expands to every point
        elif algo == "tpe":
            from ray.tune.search.hyperopt import HyperOptSearch

            search_alg = HyperOptSearch(hyperopt_space(params), metric="valid_score", mode=mode,
                                        random_state_seed=seed)
        if max_concurrent and search_alg is not None:
            from ray.tune.search import ConcurrencyLimiter

            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=max_concurrent)
        setup.extra["cpus_per_trial"] = cpus_per_trial
        trainable = tune.with_resources(tune.with_parameters(_ray_trial, setup=setup, params=params),
                                        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space=ray_space(params, algo) if search_alg is None else {},
            tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=num_samples,
                                        max_concurrent_trials=max_concurrent if search_alg is None else None),
            run_config=air.RunConfig(name=f"{setup.model}-{setup.dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
                                     storage_path=os.path.join(setup.output_dir, "ray"), verbose=verbose),
        )
        grid = tuner.fit()
        records = []
        for index, result in enumerate(grid):
            metrics = result.metrics or {}
            record = {"trial": metrics.get("trial_id", index), "params": clean_params(params, result.config),
                      "node": metrics.get("node")}
            if result.error is not None or not metrics.get("status_ok"):
                error = metrics.get("error") or lost_trial_error(result.error)
                record.update(status="failed", error=error, seconds=metrics.get("seconds"))
            else:
                record.update(
                    status="ok", error=None, seconds=metrics["seconds"], valid_score=metrics["valid_score"],
                    valid={k[6:]: v for k, v in metrics.items() if k.startswith("valid_") and k != "valid_score"},
                    test={k[5:]: v for k, v in metrics.items() if k.startswith("test_")},
                )
            records.append(record)
        return records
    finally:
        if started_here:
            ray.shutdown()


def lost_trial_error(error):
    """One line for a trial that never reported: its worker process or its node died (a Python
    error inside the trial is caught by ``run_trial`` and reported as a failed trial instead)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("Failure #")]
    detail = " ".join(lines)[:300] or type(error).__name__
    return f"trial lost: its Ray worker or node died ({detail})"


def check_cluster(resources, cpus, gpus, attached):
    """Refuse requests the cluster can never meet (Ray would leave the trials PENDING for ever)."""
    if cpus <= 0 or gpus < 0:
        raise TuningError(f"cpus_per_trial must be > 0 and gpus_per_trial >= 0, got {cpus} and {gpus}.")
    have_cpu, have_gpu = resources.get("CPU", 0), resources.get("GPU", 0)
    if attached:
        return  # an autoscaling cluster may add nodes; Ray warns about infeasible trials itself
    if gpus > have_gpu:
        raise TuningError(f"gpus_per_trial={gpus} but this Ray cluster has {have_gpu:g} GPU(s); trials would wait "
                          "for ever. Fix: --gpus_per_trial=0 on a CPU machine, or attach with --ray_address.")
    if cpus > have_cpu:
        raise TuningError(f"cpus_per_trial={cpus} but this Ray cluster has {have_cpu:g} CPU(s). "
                          f"Fix: --cpus_per_trial={int(have_cpu) or 1} or less.")
