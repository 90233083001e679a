"""On-disk graph cache: hits, invalidation, corrupt/foreign files, a build killed mid-write."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_mm.graphs import cached_tensor, fingerprint
from recbole_mm.graphs import cache as cache_module
from recbole_mm.graphs.cache import cache_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Builder:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def test_hit_returns_identical_value_without_rebuilding(tmp_path):
    value = (torch.randn(5, 3), sp.random(4, 4, density=0.5, format="csr", random_state=0))
    build = Builder(value)
    key = {"fingerprint": "abc", "k": 10}
    first = cached_tensor(tmp_path, "knn", key, build)
    second = cached_tensor(tmp_path, "knn", dict(reversed(list(key.items()))), build)
    assert build.calls == 1
    assert torch.equal(first[0], second[0]) and (first[1] != second[1]).nnz == 0
    assert cached_tensor(None, "knn", key, build) is value and build.calls == 2


def test_changing_features_split_or_params_rebuilds(tmp_path):
    feats = torch.randn(6, 4)
    split = sp.csr_matrix(np.eye(3, dtype=np.float32))
    build = Builder(torch.ones(2))
    base = {"features": feats, "split": split, "k": 3}
    cached_tensor(tmp_path, "g", base, build)
    cached_tensor(tmp_path, "g", {"features": feats.clone(), "split": split.copy(), "k": 3}, build)
    assert build.calls == 1  # same content, new objects: still a hit
    feats2 = feats.clone()
    feats2[0, 0] += 1e-3
    cached_tensor(tmp_path, "g", {**base, "features": feats2}, build)
    assert build.calls == 2
    split2 = split.tolil()
    split2[0, 1] = 1.0
    split2 = split2.tocsr()
    cached_tensor(tmp_path, "g", {**base, "split": split2}, build)
    assert build.calls == 3
    cached_tensor(tmp_path, "g", {**base, "k": 4}, build)
    assert build.calls == 4
    assert fingerprint(feats) != fingerprint(feats2)


@pytest.mark.parametrize("content", [b"", b"garbage\x00\x01", "foreign"])
def test_corrupt_or_foreign_file_is_rebuilt_with_warning(tmp_path, content):
    key = {"k": 1}
    path, _ = cache_path(tmp_path, "g", key)
    if content == "foreign":
        torch.save({"something": "else"}, path)
    else:
        with open(path, "wb") as f:
            f.write(content)
    build = Builder(torch.arange(3))
    with pytest.warns(UserWarning, match="rebuilding"):
        out = cached_tensor(tmp_path, "g", key, build)
    assert torch.equal(out, torch.arange(3)) and build.calls == 1
    cached_tensor(tmp_path, "g", key, build)  # now a valid hit
    assert build.calls == 1


def test_build_killed_while_writing_leaves_no_corrupt_cache(tmp_path, monkeypatch):
    # A child process starts writing the cache and dies (os._exit) half-way through torch.save.
    script = textwrap.dedent(f"""
        import importlib.util, os, torch
        # load cache.py alone: importing the whole package (RecBole) would only slow this down
        spec = importlib.util.spec_from_file_location(
            "cache", os.path.join({REPO!r}, "recbole_mm", "graphs", "cache.py"))
        cache = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cache)
        real_save = torch.save
        def dying_save(obj, f, *a, **kw):
            f.write(b"half a pickle")
            f.flush()
            os._exit(9)
        cache.torch.save = dying_save
        cache.cached_tensor({str(tmp_path)!r}, "g", {{"k": 1}}, lambda: torch.ones(1000))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == 9
    path, _ = cache_path(tmp_path, "g", {"k": 1})
    assert not os.path.exists(path)  # only a temp file may be left behind
    build = Builder(torch.ones(1000))
    out = cached_tensor(tmp_path, "g", {"k": 1}, build)
    assert build.calls == 1 and torch.equal(out, torch.ones(1000))

    # an interrupt (Ctrl-C) during the write removes the temp file and leaves the entry absent
    def interrupted_save(obj, f, *a, **kw):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        cached_tensor(tmp_path, "h", {"k": 2}, lambda: torch.ones(3))
    assert not any(name.startswith(".tmp-h") or name.startswith("h-") for name in os.listdir(tmp_path))


def _flip_first_occurrence(path, needle):
    """Flip one bit inside the first copy of ``needle`` (raw array bytes) in the file."""
    data = bytearray(open(path, "rb").read())
    start = bytes(data).find(needle)
    assert start >= 0, "array bytes not found in the cache file"
    data[start + len(needle) // 2] ^= 0x10
    with open(path, "wb") as handle:
        handle.write(bytes(data))


@pytest.mark.parametrize("part", ["index", "value"])
def test_flipped_bytes_in_index_or_value_array_are_never_used(tmp_path, part):
    """A graph cache with one flipped bit (in the sparse index or value array) fails its checksum:
    it is rebuilt with a warning. Before caches were sealed, flipped index bytes crashed the run and
    flipped value bytes were used silently (test metrics changed)."""
    indices = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    values = torch.tensor([0.5, 0.25, 0.125, 1.5, 2.5, 3.5])
    graph = torch.sparse_coo_tensor(indices, values, (6, 6)).coalesce()
    build = Builder(graph)
    key = {"fingerprint": "train-split", "k": 2}
    cached_tensor(tmp_path, "graph", key, build)
    path, _ = cache_path(tmp_path, "graph", key)
    array = graph.indices() if part == "index" else graph.values()
    _flip_first_occurrence(path, array.contiguous().numpy().tobytes())
    with pytest.warns(UserWarning, match="failed its check.*rebuilding"):
        out = cached_tensor(tmp_path, "graph", key, build)
    assert build.calls == 2
    assert torch.equal(out.indices(), graph.indices()) and torch.equal(out.values(), graph.values())
    again = cached_tensor(tmp_path, "graph", key, build)  # the rebuilt file is sound
    assert build.calls == 2 and torch.equal(again.to_dense(), graph.to_dense())


def test_cache_files_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        cached_tensor(tmp_path, "g", {"k": 1}, lambda: torch.ones(2))
    finally:
        os.umask(old)
    path, _ = cache_path(tmp_path, "g", {"k": 1})
    assert os.stat(path).st_mode & 0o777 == 0o644  # was 0o600 (private) before


def _build_with_peer(folder, barrier, log, out):
    """One of two processes (DDP ranks, Ray trials) asking for the same entry at the same moment."""
    def build():
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        import time

        time.sleep(0.5)  # a slow build: the peer arrives while it runs
        return torch.arange(6.0) * os.getpid()

    barrier.wait()
    torch.save(cached_tensor(folder, "graph", {"k": 1}, build), out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method")
@pytest.mark.parametrize("locked", [True, False])
def test_two_processes_starting_together_build_once(tmp_path, monkeypatch, locked):
    import contextlib
    import multiprocessing

    if not locked:  # the contrast: without the lock both build (so the test can see a double build)
        monkeypatch.setattr(cache_module, "_build_lock", lambda path: contextlib.nullcontext())
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    log = tmp_path / "builds.txt"
    outs = [tmp_path / f"out{i}.pt" for i in range(2)]
    workers = [context.Process(target=_build_with_peer, args=(tmp_path / "cache", barrier, log, out)) for out in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    builds = log.read_text().split()
    values = [torch.load(out) for out in outs]
    if locked:
        assert len(builds) == 1 and torch.equal(values[0], values[1])  # the second process loaded the first's build
        assert torch.equal(values[0], torch.arange(6.0) * int(builds[0]))
    else:
        assert len(builds) == 2
    assert len(os.listdir(tmp_path / "cache")) == 1  # one entry, and no lock file left once it is built
