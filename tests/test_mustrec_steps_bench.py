"""benchmarks/bench_mustrec_vs_official.py ``steps``: the step page is computed from its results file.

The official code is not part of the project and is not run here; these tests check the page for a
hand-made results file (per-round values, means and the three ratios) and the one-line error for a
wrong ``--official_src``.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import bench_mustrec_vs_official as bench  # noqa: E402


def row(round_index, variant, cpu_s, batches_per_epoch=201, load=0.5):
    return {"round": round_index, "variant": variant, "code": "official" if variant.startswith("official") else "ours",
            "threads": 1, "batches": 20, "step_s": cpu_s + 0.001, "step_cpu_s": cpu_s, "batch_size": 512,
            "batches_per_epoch": batches_per_epoch, "peak_rss_gib": 2.0, "load_before": [load, 0, 0],
            "load_after": [load + 0.5, 0, 0], "environment": {}, "date": "2026-12-06T03:00:00+0000",
            "host": {"cpu": "AMD EPYC", "cores": 2}, "code_version": "abc1234"}


def test_page_means_and_ratios_by_hand(tmp_path):
    values = {"recbole_mm": (0.40, 0.44), "recbole_mm, cpu_keep_freed_memory: false": (0.42, 0.46),
              "official": (1.60, 1.70), "official, allocator set as ours": (1.50, 1.54)}
    rows = [row(r, name, v[r], 239 if name.startswith("official") else 201)
            for r in range(2) for name, v in values.items()]
    results, out = tmp_path / "steps.jsonl", tmp_path / "steps.md"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench.steps_report(type("Args", (), {"results": str(results), "out": str(out)}))
    text = out.read_text()
    assert "| recbole_mm | 0.400, 0.440 | **0.420** | 0.421 | 201 | 84 | 2.00 |" in text
    assert "| official | 1.600, 1.700 | **1.650** | 1.651 | 239 | 394 | 2.00 |" in text
    assert f"glibc's defaults): **{0.42 / 1.65:.3f}**" in text  # as shipped
    assert f"same allocator setting: **{0.42 / 1.52:.3f}**" in text
    assert f"both with glibc's defaults: **{0.44 / 1.65:.3f}**" in text
    assert "load average 0.50-1.00" in text and "mean over 2 rounds" in text and "AMD EPYC, 2 cores" in text


def test_wrong_official_folder_is_one_error_line(tmp_path):
    (tmp_path / "babyscale").mkdir()
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "bench_mustrec_vs_official.py"),
                           "steps", "--data_path", str(tmp_path), "--official_src", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "steps.jsonl")], capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--official_src" in lines[0]
    assert not (tmp_path / "steps.jsonl").exists()


@pytest.mark.parametrize("content", [None, "", "not json\n", '{"variant": "x"}\n'])
def test_steps_report_of_a_wrong_file_is_one_error_line(tmp_path, content):
    results = tmp_path / "steps.jsonl"
    if content is not None:
        results.write_text(content)
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "bench_mustrec_vs_official.py"),
                           "steps-report", "--results", str(results), "--out", str(tmp_path / "page.md")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error:"), done.stderr
    assert not (tmp_path / "page.md").exists()
