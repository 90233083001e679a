"""The repository stands alone: nothing a user clones points at a folder of one machine or at
reading material outside the repository, and benchmark scripts take their data root as an
argument (a missing one is one ``error:`` line, exit code 2)."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from recbole_mm.errors import MissingFileError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a user reads or runs; tests may use ../shared/datasets (and skip without it).
SCANNED = ("recbole_mm/", "docs/", "benchmarks/", "README.md", "setup.py", "run_*.py")
MACHINE_PATH = re.compile(
    r"/work/|/root/|/home/|\.\./shared|\.\.\\shared"
    r"|\bshared/(?:specs|papers|tools|datasets)\b"  # the reading material, with or without ../
    r"""|["']\.\.["']\s*,\s*["']shared["']""")  # os.path.join(root, "..", "shared", ...)


def machine_paths(text):
    """``(line number, line)`` of every line of ``text`` that names a machine path."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
            if MACHINE_PATH.search(line)]


def scanned_files():
    """Tracked files under :data:`SCANNED` (every file there when this is not a git checkout)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *SCANNED], cwd=REPO_ROOT, capture_output=True,
                                check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = []
        for entry in SCANNED:
            top = os.path.join(REPO_ROOT, entry)
            if os.path.isdir(top):
                listed += [os.path.relpath(os.path.join(folder, name), REPO_ROOT)
                           for folder, _, names in os.walk(top) for name in names]
            elif os.path.isfile(top):
                listed.append(entry)
    paths = [os.path.join(REPO_ROOT, name) for name in listed if name]
    return [path for path in paths if os.path.isfile(path) and not os.path.islink(path)]


@pytest.mark.parametrize("line", [
    "see ../shared/specs/recbole_plugin.md section 6",
    "python /work/shared/tools/make_synthetic_mmrec.py --out x",
    'config.setdefault("data_path", os.path.join(repo, "..", "shared", "datasets"))',
    "facts in shared/papers/mustrec.txt",
    "cd /home/alice/recbole_mm",
    "ls /root/.cache",
    r"..\shared\datasets",
])
def test_machine_paths_are_found(line):
    assert machine_paths(f"first line\n{line}\n") == [(2, line)]


@pytest.mark.parametrize("line", [
    "python benchmarks/bench_knn.py --features /tmp/bench_knn_elec/image_feat.npy",
    "--data_path DATA  # DATA holds scientific/",
    "layers/ holds the shared blocks; the shared protocol of properties/overall.yaml",
    "docs/models/MuSTRec.md D6",
    "python -m recbole_mm.prepare mmrec --src SRC --name baby --out dataset/",
])
def test_ordinary_lines_are_not_machine_paths(line):
    assert machine_paths(line) == []


def test_no_file_a_user_gets_names_a_machine_path():
    files = scanned_files()
    assert any(path.endswith(os.path.join("docs", "datasets.md")) for path in files)
    assert any(path.endswith(os.path.join("recbole_mm", "model", "mustrec.py")) for path in files)
    found = []
    for path in files:
        with open(path, "rb") as handle:
            data = handle.read()
        if b"\0" in data:  # binary
            continue
        for number, line in machine_paths(data.decode("utf-8", errors="replace")):
            found.append(f"{os.path.relpath(path, REPO_ROOT)}:{number}: {line}")
    assert not found, ("paths of one machine or of reading material outside the repository (write what "
                       "readers need into docs/ and point there):\n" + "\n".join(found))


# ----------------------------------------------------------------------------- benchmark data roots
def _benchmark_common():
    path = os.path.join(REPO_ROOT, "benchmarks", "common.py")
    spec = importlib.util.spec_from_file_location("benchmarks_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_data_root(tmp_path):
    common = _benchmark_common()
    assert common.data_root(None, "ml-100k") is None  # RecBole ships it
    with pytest.raises(MissingFileError, match="--data_path is required for dataset 'scientific'"):
        common.data_root(None, "scientific")
    with pytest.raises(MissingFileError, match="no folder scientific/"):
        common.data_root(str(tmp_path), "scientific")
    (tmp_path / "scientific").mkdir()
    assert common.data_root(str(tmp_path), "scientific") == str(tmp_path)


def test_benchmark_without_data_path_is_one_error_line(tmp_path):
    script = os.path.join(REPO_ROOT, "benchmarks", "bench_mdsrec.py")
    done = subprocess.run([sys.executable, script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --data_path is required for dataset 'babyscale': pass the folder that holds babyscale/ "
        "(docs/datasets.md says how to get or make it)."]
    assert os.listdir(tmp_path) == []
