"""The built wheel stands on its own: installed into a fresh venv, it finds its packaged yaml files
and runs a 1-epoch job from a folder outside the checkout (marker ``packaging``; about 30 s)."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, write_tiny_dataset

TOP_LEVEL_SKIP = {".git", "dataset", "saved", "log", "log_tensorboard", "build", "dist", ".venv",
                  "ray_results", "hyper_results", ".pytest_cache"}


def _ignore(folder, names):
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if os.path.abspath(folder) == os.path.abspath(REPO_ROOT):
        skip |= TOP_LEVEL_SKIP & set(names)
    return skip


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.packaging
def test_wheel_in_a_fresh_venv_runs_a_job_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")  # pip never goes online here
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=_ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp_path / "wheels"), str(source)], tmp_path, env)
    wheel = next((tmp_path / "wheels").glob("recbole_mm-*.whl"))
    venv = tmp_path / "venv"  # torch, recbole & co. come from the system site-packages
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, env)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], tmp_path, env)

    work = tmp_path / "elsewhere"
    write_tiny_dataset(str(work / "dataset"), name="tiny")  # MMRec layout, no yaml: discovered by name
    where = _run([python, "-c", "import os, recbole_mm; from recbole_mm.config import PROPERTIES_DIR as P; "
                  "print(recbole_mm.__file__); print(P); "
                  "print(all(os.path.isfile(os.path.join(P, f)) for f in ('overall.yaml', 'default_job.yaml', "
                  "'model/MuSTRec.yaml', 'model/MDSRec.yaml', 'model/MMSR.yaml', 'model/IDAgnosticMMSR.yaml', "
                  "'dataset/ml-100k.yaml', 'hyper/mustrec.hyper')))"], work, env).split()
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv)) and where[2] == "True"
    output = _run([str(venv / "bin" / "recbole-mm"), "--model=MuSTRec", "--dataset=tiny", "--epochs=1",
                   "--embedding_size=8", "--hidden_size=8", "--inner_size=16", "--knn_k=3",
                   "--MAX_ITEM_LIST_LENGTH=10", "--show_progress=False", "--state=ERROR"], work, env)
    assert "MuSTRec on tiny" in output and "ndcg@10" in output
