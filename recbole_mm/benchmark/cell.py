"""One benchmark cell, run in its own process so that memory, threads and failures stay its own.

``python -m recbole_mm.benchmark.cell SPEC.json RESULT.json [PARENT_PID]`` trains and evaluates one cell
through :func:`recbole_mm.quick_start.run_recbole_mm` and writes the result (or the error) as JSON.
On Linux the cell dies with the process that started it (PARENT_PID): a killed runner, or a Ray
worker lost with its node, leaves no cell training on.
:func:`execute_cell` starts that process and measures it: wall time, CPU time (user + system of
the process and its children) and peak resident memory, from ``os.wait4``.
"""
import json
import os
import signal
import subprocess
import sys
import time


def run_spec(spec):
    """Train and evaluate the cell described by ``spec`` in this process; returns plain JSON."""
    import torch

    torch.set_num_threads(int(spec.get("threads") or 1))
    from recbole_mm.quick_start import run_recbole_mm

    result = run_recbole_mm(model=spec["model"], dataset=spec["dataset"], config_file_list=spec["config_files"],
                            config_dict=spec["config_dict"], saved=True, record_target_ranks=True)
    return {
        "best_valid_score": float(result["best_valid_score"]),
        "valid": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "test": {k: float(v) for k, v in (result["test_result"] or {}).items()},
        "training": result["training"],
        "target_ranks": result["test_target_ranks"],
    }


def die_with_parent(parent_pid):
    """Ask the kernel (Linux ``PR_SET_PDEATHSIG``) to kill this process when its parent dies; exit
    at once if the parent is already gone. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def main(argv=None):
    argv = list(argv or sys.argv[1:])
    spec_path, result_path = argv[:2]
    if len(argv) > 2:
        die_with_parent(int(argv[2]))
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    try:
        payload = {"result": run_spec(spec)}
        code = 0
    except Exception as err:  # noqa: BLE001 - the runner records the failure and goes on
        import traceback

        traceback.print_exc()
        payload, code = {"error": f"{type(err).__name__}: {err}"}, 1
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
    return code


RUNNING = set()  # process ids of cell processes started by this process (killed on interrupt)


def stop_running_cells():
    """Kill every cell process (and its children) this process started and that still runs."""
    for pid in list(RUNNING):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def execute_cell(spec, work_dir, timeout=None, log_path=None):
    """Run ``spec`` in a child process inside ``work_dir``; returns a dict with ``result`` or
    ``error``, ``log`` (the child's output), ``wall_s``, ``cpu_s`` and ``peak_rss_mb``."""
    os.makedirs(work_dir, exist_ok=True)
    # run-only settings, not part of the cell's identity: its own checkpoint folder, and no resumable
    # state per epoch (a killed cell reruns from the start)
    spec = {**spec, "config_dict": {**spec["config_dict"], "checkpoint_dir": os.path.join(work_dir, "checkpoints"),
                                    "save_last_state": False}}
    spec_path, result_path = os.path.join(work_dir, "spec.json"), os.path.join(work_dir, "result.json")
    log_path = log_path or os.path.join(work_dir, "cell.log")
    with open(spec_path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    if os.path.exists(result_path):
        os.remove(result_path)
    threads = str(int(spec.get("threads") or 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    # The cell runs in its work folder: it must import the recbole_mm this process uses (a checkout
    # run without installing, or one whose editable install points elsewhere).
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen([sys.executable, "-m", "recbole_mm.benchmark.cell", spec_path, result_path,
                                  str(os.getpid())],
                                 cwd=work_dir, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        RUNNING.add(child.pid)
        timed_out = False
        try:
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    break
                if timeout and time.time() - start > timeout:
                    os.killpg(child.pid, signal.SIGKILL)
                    timed_out = True
                time.sleep(0.5)
        finally:
            RUNNING.discard(child.pid)
        child.returncode = os.waitstatus_to_exitcode(status)
    outcome = {"wall_s": round(time.time() - start, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
               "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        outcome["log"] = handle.read()
    if timed_out:
        outcome["error"] = f"timeout: the cell ran longer than {timeout} s"
    elif os.path.isfile(result_path):
        with open(result_path, encoding="utf-8") as handle:
            outcome.update(json.load(handle))
    else:
        outcome["error"] = f"the cell process ended with code {child.returncode} and wrote no result"
    return outcome


if __name__ == "__main__":
    sys.exit(main())
