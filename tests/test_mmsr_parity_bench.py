"""benchmarks/bench_mmsr_vs_official.py: the parity page is computed from its results file.

The official code itself is not run here (it is not part of the project); these tests check what
the page says about a hand-made results file: each metric read at its best epoch, the seed mean and
sd of ours, the official value expressed in our seed sd, and the time ratio.
"""
import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import bench_mmsr_vs_official as parity  # noqa: E402


def row(code, seed, epoch, mrr20, hit20=0.2, epoch_s=10.0):
    return {"date": "2026-12-06 01:00", "threads": 1, "load": 2.0, "code": code, "seed": seed, "epoch": epoch,
            "epoch_s": epoch_s, "hit@5": 0.1, "mrr@5": 0.05, "hit@20": hit20, "mrr@20": mrr20}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def page(tmp_path, rows):
    results, out = tmp_path / "parity.jsonl", tmp_path / "parity.md"
    write(results, rows)
    parity.compare(type("Args", (), {"results": str(results), "out": str(out)}))
    return out.read_text()


def test_best_epoch_mean_sd_and_verdict_by_hand(tmp_path):
    rows = []
    for seed, curve in {1: [0.05, 0.07, 0.06], 2: [0.05, 0.06, 0.08], 3: [0.07, 0.06, 0.05]}.items():
        rows += [row("recbole_mm", seed, e, v, epoch_s=5.0) for e, v in enumerate(curve)]
    # the official run has one more epoch than ours: only the first 3 (the common count) are read
    rows += [row("official", 1, e, v, epoch_s=100.0 if e < 3 else 1000.0) for e, v in enumerate([0.04, 0.05, 0.045, 0.2])]
    text = page(tmp_path, rows)
    best = [0.07, 0.08, 0.07]
    mean, sd = np.mean(best), np.std(best, ddof=1)
    assert f"| recbole_mm | 2 | 0.1000 | 0.0500 | 0.2000 | 0.0800 | 2 | 5 |" in text
    assert f"| official | 1 | 0.1000 | 0.0500 | 0.2000 | 0.0500 | 1 | 100 |" in text
    assert f"0.0500 ± 0.0000 | 0.2000 ± 0.0000 | {mean:.4f} ± {sd:.4f}" in text
    z = (0.05 - mean) / sd
    assert f"MRR@20 z = {z:+.1f} (ours better)" in text and z < -2
    assert "HR@20: our seeds agree exactly, no z" in text  # no seed spread: no verdict claimed
    assert "load average 2.0-2.0" in text
    assert "epochs 0-2" in text and "0.2000" not in text.split("MRR@20 on the held-out part")[1]


def test_official_within_our_seed_noise(tmp_path):
    rows = [row("recbole_mm", s, 0, v, hit20=h) for s, v, h in [(1, 0.06, 0.20), (2, 0.07, 0.22), (3, 0.08, 0.21)]]
    rows.append(row("official", 1, 0, 0.065, hit20=0.228))
    text = page(tmp_path, rows)
    assert "MRR@20 z = -0.5 (within seed noise)" in text
    assert "HR@20 z = +1.8 (within seed noise)" in text


def test_scientific2_adds_a_fixed_projected_modality(tmp_path):
    source = os.path.join(REPO_ROOT, "..", "shared", "datasets")
    if not os.path.isfile(os.path.join(source, "scientific", "text_feat.npy")):
        pytest.skip("the scientific set is not next to this checkout")
    outs = []
    for name in ("a", "b"):
        parity.make_data(type("Args", (), {"data_path": source, "out": str(tmp_path / name)}))
        outs.append(tmp_path / name / "scientific2")
    text = np.load(outs[0] / "text_feat.npy")
    image = np.load(outs[0] / "image_feat.npy")
    assert image.shape == (text.shape[0], 512)
    assert np.array_equal(image, np.load(outs[1] / "image_feat.npy"))  # seeded: the same set every time
    assert (outs[0] / "scientific2.inter").read_bytes() == open(os.path.join(source, "scientific", "scientific.inter"), "rb").read()


def test_official_stopping_rule_by_hand():
    def run(values):
        return [row("official", 1, e, v) for e, v in enumerate(values)]

    # improves at epochs 0 and 1; epoch 2 resets the counter (the previous epoch improved); epochs
    # 3..10 count 1..8, so the loop breaks after epoch 10
    assert parity.official_stop_epoch(run([0.1, 0.2] + [0.1] * 12)) == 10
    assert parity.official_stop_epoch(run([0.1, 0.2] + [0.1] * 8)) is None
    # an improvement in the middle starts the count again
    assert parity.official_stop_epoch(run([0.1, 0.2, 0.1, 0.1, 0.3] + [0.1] * 9)) == 13


def test_missing_official_checkout_or_export_is_one_error_line(tmp_path):
    import pickle
    import subprocess

    script = os.path.join(REPO_ROOT, "benchmarks", "bench_mmsr_vs_official.py")
    checkout = tmp_path / "official"
    checkout.mkdir()
    (checkout / "model.py").write_text("")
    export_folder = tmp_path / "export"
    export_folder.mkdir()
    for name in ("train.pkl", "test.pkl", "codes.pkl"):
        (export_folder / name).write_bytes(pickle.dumps([]))
    for official_dir, export, named in [(tmp_path / "none", export_folder, "--official_dir"),
                                        (checkout, tmp_path / "empty", "no train.pkl")]:
        done = subprocess.run([sys.executable, script, "official", "--official_dir", str(official_dir),
                               "--export", str(export), "--epochs", "0", "--out", str(tmp_path / "x.jsonl")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0]
    assert not (tmp_path / "x.jsonl").exists()
