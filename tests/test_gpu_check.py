"""benchmarks/gpu_check.py runs end to end in its dry-run mode (tiny data, CPU, DDP command recorded).

The real run needs a CUDA GPU (docs/benchmarks/gpu.md); this checks that the single command
generates its own data, measures every stage and writes its JSON and Markdown reports.
"""
import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "benchmarks", "gpu_check.py")


def test_dry_run_measures_every_stage_and_writes_both_reports(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(out), "--steps", "1"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "check.json").read_text())
    stages = {record["stage"]: record for record in report["stages"]}
    assert all(record["status"] == "ok" for record in report["stages"]), report["stages"]
    assert stages["synthetic data"]["interactions"] > 1000
    models = [record["model"] for record in report["stages"] if "model" in record]
    assert models == ["MuSTRec", "MMSR", "MDSRec", "MDSRec", "SASRec"]
    assert all(record["step_s"] > 0 and record["eval_users"] > 0 for record in report["stages"] if "model" in record)
    assert stages["exact kNN"]["shape_out"] == [2000, 10]
    ddp = stages["1-GPU DDP (nccl), MuSTRec 1 epoch"]
    assert not ddp["ran"] and "--nproc_per_node=1" in ddp["command"] and "--dist_backend=nccl" in ddp["command"]
    assert (tmp_path / "check.md").read_text().startswith("# GPU check")


def test_synthetic_generator_writes_aligned_features(tmp_path):
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import numpy as np
    from gpu_check import write_synthetic

    info = write_synthetic(str(tmp_path / "s"), "s", users=50, items=40, inters=600, dims={"image": 8, "text": 4})
    lines = (tmp_path / "s" / "s.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float" and len(lines) - 1 == info["interactions"]
    users = {line.split("\t")[0] for line in lines[1:]}
    assert len(users) == 50 and min(sum(1 for l in lines[1:] if l.startswith(f"{u}\t")) for u in users) >= 5
    assert np.load(tmp_path / "s" / "image_feat.npy").shape == (40, 8)
    assert np.load(tmp_path / "s" / "text_feat.npy").shape == (40, 4)
