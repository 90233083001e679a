"""benchmarks/compare_code_versions.py: rows are paired by model, dataset, seed and parameters, and
the page's means, sds and tests are those of the paired values (worked out here by hand)."""
import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from recbole_mm.benchmark.metrics import paired_t_p
from recbole_mm.benchmark.store import ResultStore

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import compare_code_versions as compare  # noqa: E402


def row(model, seed, ndcg, params=None, code="old", status="ok", dataset="scientific", cpu_s=600.0):
    return {"model": model.split("-")[0], "entry": model, "dataset": dataset, "seed": seed, "params": params or {"learning_rate": 0.001},
            "status": status, "test": {"ndcg@20": ndcg}, "epochs_run": 20, "cpu_s": cpu_s, "code": code,
            "split": None, "ranks": None}


def test_pairs_need_the_same_model_seed_and_agreeing_settings():
    chosen = {"learning_rate": 0.001}
    before = [row("MDSRec", 1, 0.10), row("MDSRec", 2, 0.20), row("MDSRec", 3, 0.30, params={"learning_rate": 0.003}),
              row("MuSTRec-I", 1, 0.90),  # an ablation of the same model: another entry
              row("MDSRec", 4, 0.40, status="failed"), row("MuSTRec", 1, 0.50), row("MDSRec", 1, 0.11)]
    after = [row("MDSRec", 1, 0.12, code="new", params={}),  # ran with the values from a protocol file
             row("MDSRec", 3, 0.31, code="new", params={}), row("MDSRec", 4, 0.41, code="new"),
             row("MDSRec", 2, 0.19, code="new", dataset="ml-100k"), row("MuSTRec", 1, 0.52, code="new"),
             row("MuSTRec", 2, 0.52, code="new", params={"learning_rate": 0.01})]
    pairs = compare.pair_rows(before, after, "scientific", chosen)
    assert [(a["model"], a["seed"], a["test"]["ndcg@20"], b["test"]["ndcg@20"]) for a, b in pairs] == [
        ("MDSRec", 1, 0.11, 0.12),  # the last agreeing earlier row wins
        ("MuSTRec", 1, 0.50, 0.52)]  # seed 3: the earlier row ran another rate; 4: it failed; 2: other dataset
    assert [a["model"] for a, _ in compare.pair_rows(before, after, "scientific", chosen, ["MuSTRec"])] == ["MuSTRec"]


def test_page_means_and_paired_test_by_hand(tmp_path):
    before = [row("MDSRec", s, v, cpu_s=600.0) for s, v in [(1, 0.120), (2, 0.125), (3, 0.130)]]
    after = [row("MDSRec", s, v, code="new", cpu_s=300.0) for s, v in [(1, 0.122), (2, 0.124), (3, 0.133)]]
    stores = [ResultStore(tmp_path / "a.jsonl"), ResultStore(tmp_path / "b.jsonl")]
    text = compare.page(compare.pair_rows(before, after, "scientific"), "ndcg@20", "two files", stores)
    assert "- before, as its first row records: learning_rate 0.001; protocol files none" in text
    assert "| MDSRec | 2 | .1250 | .1240 | 20 / 20 | 10.0 / 5.0 | 30.0 / 15.0 | old / new |" in text  # 600 s / 20 epochs
    p = paired_t_p([0.122, 0.124, 0.133], [0.120, 0.125, 0.130])
    a, b = np.array([0.120, 0.125, 0.130]), np.array([0.122, 0.124, 0.133])
    short = lambda value, digits=4: f"{value:.{digits}f}".replace("0.", ".", 1)
    assert (f"| MDSRec | 3 | .1250 ± {short(a.std(ddof=1))} | {short(b.mean())} ± {short(b.std(ddof=1))} | "
            f"{short(p, 3)} | — | 30.0 → 15.0 |") in text
    assert p > 0.05


@pytest.mark.parametrize("extra,after_seed", [([], 9),  # no twin
                                              (["--params", "{lr"], 1),  # not JSON
                                              (["--metric", "ndcg@7"], 1)])  # a metric the rows lack
def test_bad_input_is_one_error_line(tmp_path, extra, after_seed):
    import subprocess

    for name, rows in (("before.jsonl", [row("MDSRec", 1, 0.1)]), ("after.jsonl", [row("MDSRec", after_seed, 0.1)])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "compare_code_versions.py"),
                           "--before", str(tmp_path / "before.jsonl"), "--after", str(tmp_path / "after.jsonl"),
                           "--dataset", "scientific", "--out", str(tmp_path / "page.md"), *extra],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error:"), done.stderr
    assert not (tmp_path / "page.md").exists()
