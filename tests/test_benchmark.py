"""The benchmark runner: grid expansion and tuning choice, the results store (resume, torn rows),
a tiny grid end to end (per-user ranks equal RecBole's metrics), a killed runner resumed, the
report from a fixture results file, and the same grid on a local Ray."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from recbole_mm.benchmark.grid import Entry, GridError, load_grid, restrict
from recbole_mm.benchmark.metrics import paired_t_p, per_user, wilcoxon_p
from recbole_mm.benchmark.report import build_report, cost_report, fmt_p, selected_runs
from recbole_mm.benchmark.runner import best_trial, expand, run_grid
from recbole_mm.benchmark.store import ResultStore
from tests.conftest import REPO_ROOT, write_tiny_dataset

TINY_PROTOCOL = {
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    "metrics": ["Hit", "NDCG", "MRR"], "topk": [5, 10], "valid_metric": "NDCG@10", "mask_history_items": True,
    "epochs": 2, "stopping_step": 1, "eval_step": 1, "embedding_size": 8, "hidden_size": 8, "inner_size": 16,
    "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 6, "train_batch_size": 64, "eval_batch_size": 256,
    "loss_type": "CE", "train_neg_sample_args": None, "show_progress": False, "reproducibility": True,
    "log_wandb": False,
}


def write_grid(tmp_path, entries, seeds=(1, 2), data=None):
    data = data or write_tiny_dataset(str(tmp_path / "data"))
    with open(tmp_path / "protocol.yaml", "w") as handle:
        yaml.safe_dump(TINY_PROTOCOL, handle)
    grid = {"protocol": ["protocol.yaml"], "seeds": list(seeds),
            "datasets": {"tiny": {"multimodal_features": data["features"]}}, "entries": entries}
    path = tmp_path / "grid.yaml"
    with open(path, "w") as handle:
        yaml.safe_dump(grid, handle, sort_keys=False)
    return str(path), data


# ------------------------------------------------------------------ grid and expansion
def test_search_grid_sets_joined_keys_and_keeps_file_order():
    entry = Entry(name="X", model="SASRec", search={"learning_rate": [1, 2], "a,b": [0.1, 0.5]})
    assert entry.search_grid() == [{"learning_rate": 1, "a": 0.1, "b": 0.1}, {"learning_rate": 1, "a": 0.5, "b": 0.5},
                                   {"learning_rate": 2, "a": 0.1, "b": 0.1}, {"learning_rate": 2, "a": 0.5, "b": 0.5}]


@pytest.mark.parametrize("bad, message", [
    ({"entries": {"SASRec": {"serach": {}}}}, "unknown field"),
    ({"entries": {"SASRec": {"search": {"learning_rate": 0.1}}}}, "non-empty list"),
    ({"entries": {"X": {"tune_from": "SASRec"}, "SASRec": {}}}, "not an entry with a search space"),
    ({"entries": {"SASRec": {}}, "datasets": {"a": {"tuned_on": "b"}, "b": {}}}, "listed before it"),
    ({"entries": {"SASRec": {}}, "sedes": [1]}, "unknown field"),
])
def test_bad_grid_files_name_the_problem(tmp_path, bad, message):
    spec = {"datasets": {"tiny": {}}, **bad}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(GridError, match=message):
        load_grid(str(path))


def _row(cell, score, status="ok"):
    return {"key": cell.key, "status": status, "best_valid_score": score, "entry": cell.entry,
            "params": cell.params, "seed": cell.seed}


def test_expand_tunes_first_then_runs_the_other_seeds_with_the_best_values(tmp_path):
    path, _ = write_grid(tmp_path, {
        "SASRec": {"search": {"learning_rate": [0.1, 0.2, 0.3]}},
        "SASRec-x": {"model": "SASRec", "config": {"n_layers": 2}, "tune_from": "SASRec"},
        "GRU4Rec": {}}, seeds=[7, 8, 9])
    grid = load_grid(path)
    machine = {"tiny": {"data_path": "/x"}}
    ready, waiting, total, _ = expand(grid, {}, set(), machine)
    trials = [c for c in ready if c.entry == "SASRec"]
    assert [c.params["learning_rate"] for c in trials] == [0.1, 0.2, 0.3] and {c.seed for c in trials} == {7}
    assert [c.seed for c in ready if c.entry == "GRU4Rec"] == [7, 8, 9]
    assert waiting == 2 + 3 and total == 3 + 2 + 3 + 3
    # the middle trial is best; the first trial failed in this run (not retried, not chosen)
    finished = {trials[1].key: _row(trials[1], 0.5), trials[2].key: _row(trials[2], 0.5)}
    ready, waiting, _, choices = expand(grid, finished, {trials[0].key}, machine)
    assert choices[("SASRec", "tiny")] == {"learning_rate": 0.2}  # first of equal scores
    finals = [c for c in ready if c.entry == "SASRec"]
    assert [(c.seed, c.role, c.params) for c in finals] == [(8, "final", {"learning_rate": 0.2}),
                                                            (9, "final", {"learning_rate": 0.2})]
    variants = [c for c in ready if c.entry == "SASRec-x"]
    assert [c.seed for c in variants] == [7, 8, 9] and all(c.config_dict["n_layers"] == 2 for c in variants)
    assert all(c.config_dict["learning_rate"] == 0.2 for c in variants) and waiting == 0
    # machine paths are not part of a cell's identity; its configuration is
    moved = expand(grid, {}, set(), {"tiny": {"data_path": "/elsewhere"}})[0]
    assert [c.key for c in moved] == [c.key for c in expand(grid, {}, set(), machine)[0]]
    assert len({c.key for c in ready}) == len(ready)


def test_seeds_option_runs_only_those_seeds_and_keeps_tuning_on_the_grids_first_seed(tmp_path):
    # `--seeds 8` on a grid with seeds [7, 8, 9] once started a new search on seed 8
    path, _ = write_grid(tmp_path, {"SASRec": {"search": {"learning_rate": [0.1, 0.2]}},
                                    "GRU4Rec": {}}, seeds=[7, 8, 9])
    machine = {"tiny": {"data_path": "/x"}}
    full_trials = [c for c in expand(load_grid(path), {}, set(), machine)[0] if c.entry == "SASRec"]
    grid = restrict(load_grid(path), seeds=[8])
    ready, waiting, total, _ = expand(grid, {}, set(), machine)
    trials = [c for c in ready if c.entry == "SASRec"]
    assert [c.key for c in trials] == [c.key for c in full_trials] and {c.seed for c in trials} == {7}
    assert [c.seed for c in ready if c.entry == "GRU4Rec"] == [8]
    assert waiting == 1 and total == 2 + 1 + 1
    finished = {c.key: _row(c, s) for c, s in zip(trials, [0.1, 0.4])}
    ready = expand(grid, finished, set(), machine)[0]
    assert [(c.entry, c.seed, c.params) for c in ready] == [("SASRec", 8, {"learning_rate": 0.2}),
                                                            ("GRU4Rec", 8, {})]


def test_best_trial_ignores_failed_and_missing_rows():
    class C:  # minimal cell stand-in
        def __init__(self, name):
            self.name = name
    cells = [C("a"), C("b"), C("c")]
    rows = [None, {"status": "failed"}, {"status": "ok", "best_valid_score": 0.1}]
    assert best_trial(cells, rows).name == "c"
    assert best_trial(cells, [None, None, None]) is None


def test_tuned_on_reuses_the_choice_of_another_dataset(tmp_path):
    path, data = write_grid(tmp_path, {"SASRec": {"search": {"learning_rate": [0.1, 0.2]}}}, seeds=[1, 2])
    spec = yaml.safe_load(open(path))
    spec["datasets"]["tiny2"] = {"tuned_on": "tiny"}
    spec["datasets"]["tiny3"] = {"tuned_on": "tiny", "seeds": [5], "epochs": 9}
    open(path, "w").write(yaml.safe_dump(spec))
    grid = load_grid(path)
    trials, _, _, _ = expand(grid, {}, set(), {})
    assert {c.dataset for c in trials} == {"tiny"}
    finished = {c.key: _row(c, s) for c, s in zip(trials, [0.3, 0.1])}
    ready = expand(grid, finished, set(), {})[0]
    assert sorted((c.dataset, c.seed) for c in ready) == [("tiny", 2), ("tiny2", 1), ("tiny2", 2), ("tiny3", 5)]
    assert all(c.params == {"learning_rate": 0.1} for c in ready)
    assert [c.config_dict["epochs"] for c in ready if c.dataset == "tiny3"] == [9]
    assert "tuned_on" not in grid.datasets["tiny3"] and "seeds" not in grid.datasets["tiny3"]
    assert set(restrict(load_grid(path), datasets=["tiny2"]).datasets) == {"tiny", "tiny2"}


# ------------------------------------------------------------------ store
def test_store_skips_and_repairs_a_torn_last_row(tmp_path):
    store = ResultStore(str(tmp_path / "r.jsonl"))
    store.append({"key": "a", "status": "ok"})
    store.append({"key": "b", "status": "failed"})
    with open(store.path, "a") as handle:
        handle.write('{"key": "c", "sta')  # a writer killed mid-line
    assert [r["key"] for r in store.rows()] == ["a", "b"]
    assert list(store.finished()) == ["a"]
    assert store.repair() == len('{"key": "c", "sta')
    store.append({"key": "c", "status": "ok"})
    assert [r["key"] for r in store.rows()] == ["a", "b", "c"]
    assert oct(os.stat(store.path).st_mode & 0o777) == oct(0o666 & ~_umask())


def test_store_keeps_ranks_beside_the_row_and_reads_old_inline_rows(tmp_path):
    store = ResultStore(str(tmp_path / "r.jsonl"))
    store.append({"key": "a", "status": "ok", "ranks": [3, 1, 7]})
    with open(store.path, "a") as handle:  # a row written before ranks moved out of the line
        handle.write(json.dumps({"key": "b", "status": "ok", "ranks": [2, 2]}) + "\n")
    line = json.loads(open(store.path).readline())
    assert isinstance(line["ranks"], str)
    assert json.load(open(os.path.join(store.ranks_dir, line["ranks"] + ".json"))) == [3, 1, 7]
    assert [r["ranks"] for r in store.rows()] == [[3, 1, 7], [2, 2]]
    store.append({"key": "c", "status": "ok", "ranks": [3, 1, 7]})  # same ranks: one file
    assert len(os.listdir(store.ranks_dir)) == 1


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ metrics
def test_per_user_metrics_by_hand():
    ranks = [1, 3, 11]
    assert per_user(ranks, "hit@10").tolist() == [1.0, 1.0, 0.0]
    assert np.allclose(per_user(ranks, "ndcg@10"), [1.0, 1 / math.log2(4), 0.0])
    assert np.allclose(per_user(ranks, "mrr@20"), [1.0, 1 / 3, 1 / 11])
    with pytest.raises(ValueError):
        per_user(ranks, "auc@10")


def test_significance_tests_match_scipy_and_handle_degenerate_input():
    from scipy.stats import ttest_rel, wilcoxon

    a, b = [0.30, 0.32, 0.35], [0.28, 0.31, 0.30]
    assert paired_t_p(a, b) == pytest.approx(ttest_rel(a, b).pvalue)
    x, y = np.array([0.5, 0.2, 0.0, 1.0, 0.3]), np.array([0.1, 0.2, 0.4, 0.0, 0.1])
    assert wilcoxon_p(x, y) == pytest.approx(wilcoxon(x, y).pvalue)
    assert math.isnan(paired_t_p([0.1], [0.2])) and math.isnan(wilcoxon_p(x, x))
    assert paired_t_p([0.2, 0.3], [0.1, 0.2]) == 0.0  # a constant gain: no variance, certain


# ------------------------------------------------------------------ end to end
def test_tiny_grid_end_to_end_rows_ranks_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, data = write_grid(tmp_path, {"SASRec": {"baseline": True, "search": {"learning_rate": [0.01, 0.05]}},
                                       "FeatureSASRec": {}}, seeds=[1, 2])
    store = ResultStore(str(tmp_path / "out" / "res.jsonl"))
    lines = []
    n_ok, n_failed = run_grid(load_grid(path), store, str(tmp_path / "out"), data_paths=[data["data_path"]],
                              log=lines.append)
    assert (n_ok, n_failed) == (5, 0)  # 2 trials + 1 final seed + 2 FeatureSASRec seeds
    rows = store.rows()
    assert sorted((r["entry"], r["role"], r["seed"]) for r in rows) == [
        ("FeatureSASRec", "final", 1), ("FeatureSASRec", "final", 2), ("SASRec", "final", 2),
        ("SASRec", "trial", 1), ("SASRec", "trial", 1)]
    for row in rows:
        # per-user ranks reproduce RecBole's own test metrics exactly
        for metric in ("hit@5", "ndcg@10", "mrr@10"):
            assert per_user(row["ranks"], metric).mean() == pytest.approx(row["test"][metric], abs=5e-5)  # RecBole rounds to 4 places
        assert row["epochs_run"] == 2 and row["best_epoch"] in (0, 1) and len(row["valid_curve"]) == 2
        assert row["peak_rss_mb"] > 50 and row["cpu_s"] > 0 and row["wall_s"] > 0
        split = store.get_split(row["split"])
        assert len(split["user"]) == len(row["ranks"]) == 30 and all(c >= 1 for c in split["train_count"])
        assert os.path.isfile(tmp_path / "out" / "logs" / f"{row['cell_id']}.log")
    best = max((r for r in rows if r["role"] == "trial"), key=lambda r: r["best_valid_score"])
    assert [r for r in rows if r["role"] == "final" and r["entry"] == "SASRec"][0]["params"] == best["params"]
    assert any("ETA" in line for line in lines)
    # a rerun skips every finished cell; a new seed only adds its cells
    assert run_grid(load_grid(path), store, str(tmp_path / "out"), data_paths=[data["data_path"]],
                    log=lines.append) == (0, 0)
    grid = restrict(load_grid(path), seeds=[1, 2, 3])
    assert run_grid(grid, store, str(tmp_path / "out"), data_paths=[data["data_path"]], log=lines.append) == (2, 0)
    selected = selected_runs(store.rows(), grid)
    assert [r["seed"] for r in selected[("SASRec", "tiny")]["runs"]] == [1, 2, 3]
    assert selected[("SASRec", "tiny")]["runs"][0]["key"] == best["key"]


def test_killed_runner_leaves_whole_rows_and_a_rerun_completes(tmp_path):
    path, data = write_grid(tmp_path, {"SASRec": {}}, seeds=[1, 2, 3])
    out = tmp_path / "out" / "res.jsonl"
    command = [sys.executable, os.path.join(REPO_ROOT, "run_benchmark.py"), "--grid", path, "--data_path",
               data["data_path"], "--out", str(out)]
    runner = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 1):
        time.sleep(0.5)
    os.kill(runner.pid, signal.SIGKILL)  # the runner alone: its running cell must not outlive it
    runner.wait()
    assert _processes_mentioning(str(tmp_path)) == []
    store = ResultStore(str(out))
    first = store.rows()
    assert 1 <= len(first) < 3 and all(r["status"] == "ok" for r in first)
    with open(out, "a") as handle:
        handle.write('{"key": "torn')  # as if the kill had landed inside a write
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = store.rows()
    assert sorted(r["seed"] for r in rows) == [1, 2, 3] and [r["key"] for r in rows[:len(first)]] == [r["key"] for r in first]
    assert "torn" not in out.read_text()


def _processes_mentioning(text, wait=10.0):
    """Command lines of live processes containing ``text`` (after up to ``wait`` s to die)."""
    deadline = time.time() + wait
    while True:
        found = []
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(pid) != os.getpid():
                found.append(cmdline)
        if not found or time.time() > deadline:
            return found
        time.sleep(0.5)


def test_sigterm_stops_the_runner_and_its_cells(tmp_path):
    path, data = write_grid(tmp_path, {"SASRec": {}}, seeds=[1])
    out = tmp_path / "out" / "res.jsonl"
    runner = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "run_benchmark.py"), "--grid", path,
                               "--data_path", data["data_path"], "--out", str(out)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    spec = tmp_path / "out" / "work"
    deadline = time.time() + 120
    while time.time() < deadline and not list(spec.glob("*/spec.json")):
        time.sleep(0.2)
    time.sleep(1.0)  # the cell process is running
    runner.terminate()
    assert runner.wait(timeout=60) == 128 + signal.SIGTERM
    assert _processes_mentioning(str(tmp_path)) == []
    assert not out.exists() or ResultStore(str(out)).rows() == []  # a stopped cell writes no row


def test_cli_reports_bad_input_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_benchmark.py"), "--grid",
                           str(tmp_path / "missing.yaml")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: grid file not found")
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_benchmark.py"), "--models", "SASRec",
                           "--datasets", "x", "--seeds", "a,b"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "--seeds takes integers" in done.stderr


@pytest.mark.filterwarnings("ignore")
def test_ray_executor_runs_cells_on_a_local_ray(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    path, data = write_grid(tmp_path, {"SASRec": {}}, seeds=[1, 2])
    store = ResultStore(str(tmp_path / "out" / "res.jsonl"))
    try:
        n_ok, n_failed = run_grid(load_grid(path), store, str(tmp_path / "out"), workers=2,
                                  data_paths=[data["data_path"]], executor="ray", log=lambda line: None)
    finally:
        ray.shutdown()
    assert (n_ok, n_failed) == (2, 0)
    rows = store.rows()
    assert sorted(r["seed"] for r in rows) == [1, 2]
    assert all(os.path.getsize(tmp_path / "out" / "logs" / f"{r['cell_id']}.log") > 0 for r in rows)


# ------------------------------------------------------------------ report
def _fixture_rows(store):
    """Two entries x 3 seeds with known per-user ranks on 4 users."""
    split = store.put_split({"user": ["u1", "u2", "u3", "u4"], "item": ["a", "b", "c", "d"],
                             "train_count": [1, 20, 3, 50]})
    ranks = {("A", 1): [1, 2, 30, 1], ("A", 2): [1, 3, 30, 2], ("A", 3): [2, 2, 1, 1],
             ("B", 1): [5, 30, 30, 1], ("B", 2): [4, 30, 30, 3], ("B", 3): [9, 30, 2, 1]}
    rows = []
    for (entry, seed), values in ranks.items():
        test = {m: float(per_user(values, m).mean()) for m in ("hit@10", "hit@20", "ndcg@10", "ndcg@20", "mrr@20")}
        rows.append({"key": f"{entry}{seed}", "status": "ok", "entry": entry, "model": "SASRec", "dataset": "d",
                     "seed": seed, "role": "final", "params": {}, "best_valid_score": 0.1, "valid": test, "test": test,
                     "epochs_run": 12, "best_epoch": 1, "stopped_by_patience": True, "valid_curve": [[0, 0.1], [1, 0.2]],
                     "wall_s": 60.0, "cpu_s": 50.0, "peak_rss_mb": 100.0, "split": split, "ranks": values,
                     "host": {"cpu": "cpu", "cores": 2, "threads": 1, "load_before": 1.0},
                     "finished_at": f"2026-12-04T10:0{seed}:00"})
    return rows, ranks


def test_report_tables_from_a_fixture_results_file(tmp_path):
    from scipy.stats import ttest_rel

    pytest.importorskip("matplotlib")
    protocol = tmp_path / "p.yaml"
    protocol.write_text(yaml.safe_dump({"valid_metric": "NDCG@20", "stopping_step": 10, "epochs": 300,
                                        "mask_history_items": True, "embedding_size": 64}))
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"protocol": [str(protocol)], "seeds": [1, 2, 3], "datasets": {"d": {}},
                                         "entries": {"A": {"model": "SASRec"}, "B": {"model": "SASRec", "baseline": True}}}))
    store = ResultStore(str(tmp_path / "res.jsonl"))
    rows, ranks = _fixture_rows(store)
    for row in rows:
        store.append(row)
    claims = [{"paper": "P", "claim": "A beats B", "compare": {"dataset": "d", "a": "A", "b": "B", "metric": "ndcg@20"}}]
    text = build_report(load_grid(str(grid_path)), store, str(tmp_path / "results.md"), figure_dir=str(tmp_path / "fig"),
                        claims=claims)
    ndcg_a = [per_user(ranks[("A", s)], "ndcg@20").mean() for s in (1, 2, 3)]
    ndcg_b = [per_user(ranks[("B", s)], "ndcg@20").mean() for s in (1, 2, 3)]
    line_a = next(line for line in text.splitlines() if line.startswith("| A "))
    expected = f"{np.mean(ndcg_a):.4f} ± {np.std(ndcg_a, ddof=1):.4f}".replace("0.", ".")
    assert f"**{expected}**" in line_a  # best mean of its column, in bold
    p = ttest_rel(ndcg_a, ndcg_b).pvalue
    assert f"{p:.3f}".lstrip("0") in line_a
    assert "B (baseline) ◆" in text and "0 of 6 runs reached the epoch cap" in text
    assert "2 cold, 2 warm test users" in text  # train counts 1 and 3 are below 10
    assert "| P | A beats B |" in text and "holds" in text
    for name in ("leaderboard.png", "curves-d.png", "leaderboard.tex"):
        assert os.path.getsize(tmp_path / "fig" / name) > 0
    assert r"\textbf{" in open(tmp_path / "fig" / "leaderboard.tex").read()
    cost = cost_report(load_grid(str(grid_path)), store, str(tmp_path / "cost.md"))
    assert "| d | A | 3 | 12 | 1.0 | 0.8 | 0.04 | 0.10 |" in cost  # 3 runs x 50 s CPU = 0.04 h
    assert "6 finished runs, **0.1 CPU hours**" in cost


def test_ablation_table_tests_variants_against_the_full_model(tmp_path):
    """An ablation table has no baseline: its p-values compare each variant with the full model."""
    from scipy.stats import ttest_rel

    protocol = tmp_path / "p.yaml"
    protocol.write_text(yaml.safe_dump({"valid_metric": "NDCG@20", "stopping_step": 10, "epochs": 300}))
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"protocol": [str(protocol)], "seeds": [1, 2, 3], "datasets": {"d": {}},
                                         "entries": {"A": {"model": "SASRec", "search": {"learning_rate": [0.1]}},
                                                     "A-x": {"model": "SASRec", "tune_from": "A", "table": "Ablations"}}}))
    store = ResultStore(str(tmp_path / "res.jsonl"))
    rows, ranks = _fixture_rows(store)
    for row in rows:  # A: the tuned full model (trial on seed 1); A-x: the variant, with B's ranks
        params = {"learning_rate": 0.1}
        if row["entry"] == "A":
            store.append({**row, "role": "trial" if row["seed"] == 1 else "final", "params": params})
        else:
            store.append({**row, "key": row["key"].replace("B", "X"), "entry": "A-x", "params": params})
    text = build_report(load_grid(str(grid_path)), store, str(tmp_path / "results.md"))
    table = text.split("## Ablations")[1]
    variant = next(line for line in table.splitlines() if line.startswith("| A-x"))
    assert next(line for line in table.splitlines() if line.startswith("| A ")).startswith("| A ◆")
    expected = ttest_rel([per_user(ranks[("B", s)], "ndcg@20").mean() for s in (1, 2, 3)],
                         [per_user(ranks[("A", s)], "ndcg@20").mean() for s in (1, 2, 3)]).pvalue
    assert fmt_p(expected) in variant.split("|")[-5]


def test_which_model_section_names_leader_ties_and_cheapest(tmp_path):
    """The 'which model to use' bullets follow from the tables: A leads; C (A's ranks, cheaper) is
    tied with it; B, the only baseline, is separated from A exactly when the seed t-test says so."""
    from scipy.stats import ttest_rel

    pytest.importorskip("matplotlib")
    protocol = tmp_path / "p.yaml"
    protocol.write_text(yaml.safe_dump({"valid_metric": "NDCG@20", "stopping_step": 10, "epochs": 300}))
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"protocol": [str(protocol)], "seeds": [1, 2, 3], "datasets": {"d": {}},
                                         "entries": {"A": {"model": "SASRec"}, "C": {"model": "SASRec"},
                                                     "B": {"model": "SASRec", "baseline": True}}}))
    store = ResultStore(str(tmp_path / "res.jsonl"))
    rows, ranks = _fixture_rows(store)
    for row in rows:
        store.append(row)
        if row["entry"] == "A":  # C: the same ranks as A at a fifth of the CPU time
            store.append({**row, "key": row["key"].replace("A", "C"), "entry": "C", "cpu_s": 10.0})
    text = build_report(load_grid(str(grid_path)), store, str(tmp_path / "results.md"))
    section = text.split("## Which model to use")[1].split("## Leaderboard")[0]
    assert "highest test NDCG@20: **A**" in section or "highest test NDCG@20: **C**" in section
    ndcg_a = [per_user(ranks[("A", s)], "ndcg@20").mean() for s in (1, 2, 3)]
    ndcg_b = [per_user(ranks[("B", s)], "ndcg@20").mean() for s in (1, 2, 3)]
    separated = ttest_rel(ndcg_a, ndcg_b).pvalue <= 0.05  # Wilcoxon on 4 users can never reach .05
    assert ("so ahead" in section) == separated
    tied_line = next(line for line in section.splitlines() if "Tied with it" in line)
    assert "C" in tied_line or "A" in tied_line
    assert ("B" in tied_line) != separated
    assert "the cheapest of these per run is C" in tied_line
    assert "On cold targets" not in section  # 2 cold test users are too few to name a winner
    assert "All datasets" not in section  # one dataset: nothing to combine
    assert "seed(s) so far" not in section  # every row has its 3 seeds
    # a second dataset where C has not run: the combined line names only rows judged on both
    spec = yaml.safe_load(grid_path.read_text())
    spec["datasets"]["e"] = {}
    grid_path.write_text(yaml.safe_dump(spec))
    for row in rows:
        store.append({**row, "key": row["key"] + "e", "dataset": "e"})
    text = build_report(load_grid(str(grid_path)), store, str(tmp_path / "results.md"))
    line = next(line for line in text.splitlines() if line.startswith("- **All datasets** (d, e)"))
    judged, _, unjudged = line.partition("Not run on every dataset yet")
    assert "A" in judged.split(":", 1)[1] and ("B" in judged.split(":", 1)[1]) != separated
    assert "C" not in judged.split(":", 1)[1] and unjudged.endswith(": C.")


def test_fixed_budget_dataset_is_reported_but_not_counted_as_capped_or_combined(tmp_path):
    """A dataset with its own epoch budget (runs stop at the budget by design) gets its table and
    leader line, but its runs do not count as hitting the protocol's cap, and the every-dataset
    line combines only the converged datasets."""
    protocol = tmp_path / "p.yaml"
    protocol.write_text(yaml.safe_dump({"valid_metric": "NDCG@20", "stopping_step": 10, "epochs": 300}))
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({
        "protocol": [str(protocol)], "seeds": [1, 2, 3],
        "datasets": {"d": {}, "e": {}, "f": {"seeds": [1], "epochs": 10}},
        "entries": {"A": {"model": "SASRec"}, "B": {"model": "SASRec", "baseline": True}}}))
    store = ResultStore(str(tmp_path / "res.jsonl"))
    rows, ranks = _fixture_rows(store)
    for row in rows:
        store.append(row)
        store.append({**row, "key": row["key"] + "e", "dataset": "e"})
        if row["seed"] == 1:  # f: one seed, stopped by its budget
            store.append({**row, "key": row["key"] + "f", "dataset": "f", "stopped_by_patience": False})
    claims = [{"paper": "P", "claim": "A beats B on f", "compare": {"dataset": "f", "a": "A", "b": "B"}}]
    text = build_report(load_grid(str(grid_path)), store, str(tmp_path / "results.md"), claims=claims)
    # one seed: the claim is tested over that seed's test users (Wilcoxon), not left untested
    p_users = wilcoxon_p(per_user(ranks[("A", 1)], "ndcg@20"), per_user(ranks[("B", 1)], "ndcg@20"))
    claim_row = next(line for line in text.splitlines() if line.startswith("| 1 | P |"))
    assert f"(1 seed)" in claim_row and f"p users {fmt_p(p_users)}" in claim_row
    assert "same direction, not significant" in claim_row  # 4 users cannot reach p <= .05
    assert "0 of 12 runs reached the epoch cap (not counted: the runs on f," in text
    assert "### f" in text
    leader_f = next(line for line in text.splitlines() if line.startswith("- **f**: highest"))
    assert "Fixed budget of 10 epochs and 1 seed(s)" in leader_f
    combined = next(line for line in text.splitlines() if line.startswith("- **All datasets**"))
    assert combined.startswith("- **All datasets** (d, e):") and "f: fixed budget" in combined
    # without the budget key the same f runs count as capped and join the combined line
    spec = yaml.safe_load(grid_path.read_text())
    spec["datasets"]["f"] = {"seeds": [1]}
    grid_path.write_text(yaml.safe_dump(spec))
    text = build_report(load_grid(str(grid_path)), store, str(tmp_path / "results.md"))
    assert "2 of 14 runs reached the epoch cap." in text
    assert "- **All datasets** (d, e, f):" in text


def test_shipped_claims_name_entries_the_leaderboard_runs_on_that_dataset():
    """A claim whose entry or dataset is misspelt would read 'not run yet' forever."""
    grid = load_grid(os.path.join(REPO_ROOT, "recbole_mm", "properties", "benchmark", "leaderboard.yaml"))
    with open(os.path.join(REPO_ROOT, "recbole_mm", "properties", "benchmark", "claims.yaml")) as handle:
        claims = yaml.safe_load(handle)
    for number, claim in enumerate(claims, start=1):
        compare = claim["compare"]
        assert compare["dataset"] in grid.datasets, number
        runs_there = {e.name for e in grid.entries_for(compare["dataset"])}
        assert {compare["a"], compare["b"]} <= runs_there, (number, compare)
        assert compare.get("metric", "ndcg@20") in ("hit@10", "hit@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20")
        assert compare.get("expect", "a>b") in ("a>b", "a<b")
