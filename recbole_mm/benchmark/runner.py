"""The grid scheduler: expands the grid against what is already finished, runs ready cells on
local processes or Ray workers, appends one row per finished cell and prints progress with an ETA.

Resuming is the default: a cell whose key already has a successful row is skipped, so rerunning
the same command after a kill (or after adding seeds or models) completes the grid. A cell that
fails is recorded with its error and log; it is retried on the next run, not in the same one.
"""
import os
import platform
import shutil
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from recbole_mm.benchmark.cell import execute_cell, stop_running_cells
from recbole_mm.benchmark.grid import MACHINE_KEYS, GridError, make_cell


# ------------------------------------------------------------------ expansion
def best_trial(trials, rows):
    """The trial with the highest validation score (first in grid order on ties); rows of
    failed or missing trials are None."""
    best, best_score = None, None
    for cell, row in zip(trials, rows):
        if row is not None and row.get("status") == "ok" and (best_score is None or row["best_valid_score"] > best_score):
            best, best_score = cell, row["best_valid_score"]
    return best


def expand(grid, finished, failed, machine):
    """Cells of the grid given the finished rows ``{key: row}`` and the keys that ``failed`` in
    this run. Returns ``(ready, waiting, total, choices)``: cells that can run now, the number
    waiting for a tuning choice, the grid's total, and ``{(entry, dataset): tuned params}``."""
    ready, waiting, total, choices = [], 0, 0, {}
    for dataset in grid.datasets:
        seeds = grid.run_seeds(dataset)
        tuning_seed = grid.seeds_for(dataset)[0]
        entries = grid.entries_for(dataset)
        source = grid.tuned_on.get(dataset)
        for entry in [e for e in entries if e.search and source is not None]:
            total += len(seeds)
            params = choices.get((entry.name, source))
            if params is None:
                waiting += len(seeds)
                continue
            finals = [make_cell(grid, entry, dataset, seed, "final", params, machine) for seed in seeds]
            choices[(entry.name, dataset)] = params
            ready += [c for c in finals if c.key not in finished and c.key not in failed]
        for entry in [e for e in entries if e.search and source is None]:
            trials = [make_cell(grid, entry, dataset, tuning_seed, "trial", params, machine)
                      for params in entry.search_grid()]
            later = [seed for seed in seeds if seed != tuning_seed]  # the best trial is the first seed's run
            total += len(trials) + len(later)
            rows = [finished.get(cell.key) for cell in trials]
            ready += [cell for cell, row in zip(trials, rows) if row is None and cell.key not in failed]
            if all(row is not None or cell.key in failed for cell, row in zip(trials, rows)):
                best = best_trial(trials, rows)
                if best is None:
                    continue  # every trial failed: nothing to choose
                choices[(entry.name, dataset)] = best.params
                finals = [make_cell(grid, entry, dataset, seed, "final", best.params, machine) for seed in later]
                ready += [c for c in finals if c.key not in finished and c.key not in failed]
            else:
                waiting += len(later)
        for entry in [e for e in entries if not e.search]:
            total += len(seeds)
            if entry.tune_from is not None:
                params = choices.get((entry.tune_from, dataset))
                if params is None:
                    waiting += len(seeds)
                    continue
            else:
                params = {}
            finals = [make_cell(grid, entry, dataset, seed, "final", params, machine) for seed in seeds]
            ready += [c for c in finals if c.key not in finished and c.key not in failed]
    return ready, waiting, total, choices


def resolve_data_paths(grid, data_paths):
    """Absolute ``data_path`` per dataset: the first of ``data_paths`` holding ``<name>/``, else
    ``dataset/`` under the working directory (where ml-100k's features are built)."""
    resolved = {}
    for name in grid.datasets:
        given = grid.datasets[name].get("data_path")
        candidates = ([given] if given else []) + list(data_paths or [])
        found = next((p for p in candidates if os.path.isdir(os.path.join(p, name))), None)
        resolved[name] = os.path.abspath(found or given or "dataset")
    return resolved


# ------------------------------------------------------------------ executors
class LocalExecutor:
    """Cells as child processes of this machine, ``workers`` at a time."""

    def __init__(self, workers):
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def submit(self, spec, work_dir, timeout, log_path):
        return self.pool.submit(execute_cell, spec, work_dir, timeout, log_path)

    def wait_any(self, handles):
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(handle, handle.result()) for handle in done]

    def close(self):
        self.pool.shutdown(wait=True)

    def stop(self):
        """Kill the running cells (their rows are never written: they rerun next time)."""
        stop_running_cells()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _execute_remote(spec, timeout):
    """A Ray task: the cell in a scratch folder of the worker node; the log comes back whole,
    with the host name and Ray's node id (distinct for several nodes on one host)."""
    import tempfile

    import ray

    work_dir = tempfile.mkdtemp(prefix="recbole_mm-cell-")
    try:
        outcome = execute_cell(spec, work_dir, timeout)
        outcome.update(node=platform.node(), ray_node=ray.get_runtime_context().get_node_id())
        return outcome
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


class RayExecutor:
    """Cells as Ray tasks of ``threads`` CPUs each, on the cluster at ``address`` (``auto``,
    ``HOST:PORT``) or on a local Ray started for this run (``address=None``)."""

    def __init__(self, address, workers, threads):
        import ray

        self.ray = ray
        self.started = {}
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers * threads, log_to_driver=False, include_dashboard=False)
        self.task = ray.remote(num_cpus=threads, max_retries=0)(_execute_remote)

    def submit(self, spec, work_dir, timeout, log_path):
        handle = self.task.remote(spec, timeout)
        self.started[handle] = time.time()
        return handle

    def wait_any(self, handles):
        done, _ = self.ray.wait(list(handles), num_returns=1)
        return [(handle, self._outcome(handle)) for handle in done]

    def _outcome(self, handle):
        """The task's outcome; a task lost with its worker or node becomes a failed cell (retried
        on the next run) instead of ending the run."""
        started = self.started.pop(handle)
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as err:
            detail = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
            return {"error": f"cell lost: its Ray worker or node died ({type(err).__name__}: {detail})",
                    "wall_s": round(time.time() - started, 1), "cpu_s": None, "peak_rss_mb": None, "log": ""}

    def close(self):
        pass

    def stop(self):
        pass  # Ray cancels the tasks of a driver that exits


# ------------------------------------------------------------------ rows
def host_facts(threads):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"node": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "threads": threads}


def code_version():
    """Git commit of the checkout recbole_mm runs from (with ``+dirty``), or the package version."""
    import recbole_mm

    folder = os.path.dirname(os.path.dirname(os.path.abspath(recbole_mm.__file__)))
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return f"recbole_mm {recbole_mm.__version__}"


def make_row(cell, outcome, store, facts, version, load_before):
    row = {
        "key": cell.key, "cell_id": cell.cell_id, "entry": cell.entry, "model": cell.model, "dataset": cell.dataset,
        "seed": cell.seed, "role": cell.role, "params": cell.params,
        "config": {k: v for k, v in cell.config_dict.items() if k not in MACHINE_KEYS},
        "protocol_files": [os.path.basename(p) for p in cell.config_files],
        "wall_s": outcome["wall_s"], "cpu_s": outcome["cpu_s"], "peak_rss_mb": outcome["peak_rss_mb"],
        "host": {**facts, "node": outcome.get("node", facts["node"]), "load_before": load_before,
                 **({"ray_node": outcome["ray_node"]} if "ray_node" in outcome else {})},
        "code": version, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if "error" in outcome:
        tail = [line for line in outcome.get("log", "").splitlines() if line.strip()][-5:]
        row.update(status="failed", error=outcome["error"], log_tail=tail)
        return row
    result = outcome["result"]
    training = result["training"]
    ranks = result["target_ranks"]
    order = sorted(range(len(ranks["user"])), key=lambda i: ranks["user"][i])
    split = {"user": [ranks["user"][i] for i in order], "item": [ranks["item"][i] for i in order],
             "train_count": [ranks["train_count"][i] for i in order]}
    row.update(status="ok", best_valid_score=result["best_valid_score"], valid=result["valid"], test=result["test"],
               epochs_run=training["epochs_run"], best_epoch=training["best_epoch"],
               stopped_by_patience=training["stopped_by_patience"],
               valid_curve=[[h["epoch"], h["score"]] for h in training["valid_history"]],
               split=store.put_split(split), ranks=[ranks["rank"][i] for i in order])
    return row


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def estimate_seconds(cells, rows):
    """Expected wall time of each cell: mean of finished rows of the same entry and dataset,
    else of the dataset, else of every row; None without any finished row."""
    def mean(values):
        return sum(values) / len(values) if values else None

    ok = [r for r in rows if r.get("status") == "ok"]
    by_pair, by_dataset = {}, {}
    for row in ok:
        by_pair.setdefault((row["entry"], row["dataset"]), []).append(row["wall_s"])
        by_dataset.setdefault(row["dataset"], []).append(row["wall_s"])
    overall = mean([r["wall_s"] for r in ok])
    return [mean(by_pair.get((c.entry, c.dataset), [])) or mean(by_dataset.get(c.dataset, [])) or overall
            for c in cells]


# ------------------------------------------------------------------ the run
def run_grid(grid, store, out_dir, workers=1, threads=1, data_paths=None, executor="local", ray_address=None,
             timeout=None, keep_checkpoints=False, dry_run=False, log=print):
    """Run every unfinished cell of ``grid``; returns ``(n_finished_now, n_failed_now)``."""
    out_dir = os.path.abspath(out_dir)
    removed = store.repair()
    if removed:
        log(f"cut a torn last line ({removed} bytes) from {store.path}")
    data = resolve_data_paths(grid, data_paths)
    machine = {name: {"data_path": path, "graph_cache_dir": os.path.join(out_dir, "graph_cache")}
               for name, path in data.items()}
    finished = store.finished()
    failed = set()
    ready, waiting, total, _ = expand(grid, finished, failed, machine)
    done_before = total - len(ready) - waiting
    log(f"grid: {total} cells, {done_before} finished before, {len(ready)} ready, {waiting} waiting for a tuning "
        f"choice; {workers} worker(s) x {threads} thread(s); results {store.path}")
    for name, path in data.items():
        log(f"  {name}: data_path {path}")
    if dry_run:
        for cell in ready:
            log(f"  would run {cell.describe()}")
        return 0, 0
    if executor == "ray":
        pool = RayExecutor(ray_address, workers, threads)
    elif executor == "local":
        pool = LocalExecutor(workers)
    else:
        raise GridError(f"unknown executor '{executor}'. Fix: --executor local or ray.")
    facts, version = host_facts(threads), code_version()
    running, n_ok, n_failed = {}, 0, 0
    try:
        while True:
            ready, waiting, total, _ = expand(grid, store.finished(), failed, machine)
            ready = [c for c in ready if c.key not in {r[0].key for r in running.values()}]
            while ready and len(running) < workers:
                cell = ready.pop(0)
                work_dir = os.path.join(out_dir, "work", cell.cell_id)
                log_path = os.path.join(out_dir, "logs", f"{cell.cell_id}.log")
                os.makedirs(os.path.dirname(log_path), exist_ok=True)
                spec = cell_spec(cell, threads)
                handle = pool.submit(spec, work_dir, timeout, log_path)
                running[handle] = (cell, os.getloadavg()[0], work_dir, log_path)
                log(f"start {cell.describe()}")
            if not running:
                break
            for handle, outcome in pool.wait_any(list(running)):
                cell, load_before, work_dir, log_path = running.pop(handle)
                if executor == "ray":
                    with open(log_path, "w", encoding="utf-8") as handle_log:
                        handle_log.write(outcome.get("log", ""))
                row = make_row(cell, outcome, store, facts, version, load_before)
                store.append(row)
                if row["status"] == "ok":
                    n_ok += 1
                    if not keep_checkpoints:
                        shutil.rmtree(work_dir, ignore_errors=True)
                    what = (f"valid {row['best_valid_score']:.4f}, test {_first_metric(row['test'])}, epochs "
                            f"{row['epochs_run']} (best {row['best_epoch']}{'' if row['stopped_by_patience'] else ', CAP'})")
                else:
                    n_failed += 1
                    failed.add(cell.key)
                    what = f"FAILED: {row['error']} (log {log_path})"
                rows = store.rows()
                ready_after, waiting, total, _ = expand(grid, store.finished(), failed, machine)
                pending = [c for c in ready_after if c.key not in {r[0].key for r in running.values()}]
                left = len(pending) + waiting + len(running)
                estimates = [e for e in estimate_seconds(pending + [r[0] for r in running.values()], rows) if e]
                eta = f", ETA ~{_duration(sum(estimates) / max(1, workers) * (left / max(1, len(estimates))))}" if estimates else ""
                done = total - left
                log(f"[{done}/{total}] {cell.describe()}: {what}, {outcome['wall_s']:.0f} s | running {len(running)}, "
                    f"left {left}{eta}")
    except BaseException:  # KeyboardInterrupt, SystemExit (SIGTERM): no orphaned cells
        pool.stop()
        raise
    pool.close()
    return n_ok, n_failed


def cell_spec(cell, threads):
    """What a cell process runs. The packaged dataset+model layer (the ml-100k demo sizes) is off
    unless the entry turns it on, so the grid's protocol and entry alone decide every setting."""
    return {"model": cell.model, "dataset": cell.dataset, "config_files": cell.config_files,
            "config_dict": {"dataset_model_defaults": False, **cell.config_dict}, "threads": threads}


def _first_metric(metrics):
    for key in ("ndcg@20", "hit@10"):
        if key in metrics:
            return f"{key} {metrics[key]:.4f}"
    return ""
