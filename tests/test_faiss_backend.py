"""Optional faiss backend (knn_backend / kmeans_backend: faiss) against the torch reference, and the
low-rank and PCA helpers (torch.pca_lowrank basis, MMSR's PCA codes). faiss tests skip without faiss-cpu.
"""
import importlib.util

import numpy as np
import pytest
import torch

from recbole_mm.errors import ConfigError
from recbole_mm.graphs.codes import kmeans
from recbole_mm.graphs.knn import _low_rank_basis, knn_graph, topk_cosine

HAVE_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss-cpu is not installed (optional extra)")


def clustered(n=3000, d=48, topics=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(topics, d, generator=generator)
    return centres[torch.randint(0, topics, (n,), generator=generator)] + 0.6 * torch.randn(n, d, generator=generator)


def recall(reference, other):
    return np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(reference.tolist(), other.tolist())])


@needs_faiss
@pytest.mark.parametrize("include_self", ["include", "exclude"])
def test_faiss_knn_agrees_with_exact(include_self):
    x = clustered()
    mask = torch.ones(len(x), dtype=torch.bool)
    mask[[0, 17, 99]] = False
    exact_idx, exact_val = topk_cosine(x, 10, include_self=include_self, valid_mask=mask)
    faiss_idx, faiss_val = topk_cosine(x, 10, include_self=include_self, valid_mask=mask, backend="faiss")
    valid = mask.nonzero().flatten()
    assert recall(exact_idx[valid], faiss_idx[valid]) >= 0.97
    assert (faiss_idx[~mask] == -1).all() and not torch.isin(faiss_idx[valid], torch.tensor([0, 17, 99])).any()
    if include_self == "exclude":
        assert not (faiss_idx[valid] == valid.unsqueeze(1)).any()
    # reported values are the cosines of the pairs found, sorted descending
    normed = x / x.norm(dim=1, keepdim=True)
    rows = valid[:50]
    expected = (normed[rows].unsqueeze(1) * normed[faiss_idx[rows]]).sum(-1)
    torch.testing.assert_close(faiss_val[rows], expected, atol=1e-4, rtol=1e-4)
    assert (faiss_val[valid][:, :-1] >= faiss_val[valid][:, 1:]).all()
    graph = knn_graph(x, 10, valid_mask=mask, backend="faiss")
    assert graph.shape == (len(x), len(x)) and graph._nnz() == 10 * len(valid) + 2  # invalid rows: self loops, PAD none


@needs_faiss
def test_faiss_kmeans_partitions_like_ours():
    x = clustered(n=2000, d=16, topics=8, seed=1)
    _, ours = kmeans(x, 8, seed=3)
    centres, theirs = kmeans(x, 8, seed=3, backend="faiss")
    assert centres.shape == (8, 16) and theirs.shape == (2000,)
    agreement = (torch.bincount(ours * 8 + theirs, minlength=64).view(8, 8).max(1).values.sum()) / 2000.0
    assert agreement >= 0.9  # the same blobs, up to a relabelling


def test_missing_faiss_is_a_config_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        topk_cosine(clustered(n=50), 3, backend="faiss")
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        kmeans(clustered(n=50), 3, backend="faiss")
    with pytest.raises(ConfigError, match="'torch' or 'faiss'"):
        topk_cosine(clustered(n=50), 3, backend="annoy")


def test_pca_lowrank_basis_spans_the_top_singular_subspace_and_is_seeded():
    x = clustered(n=800, d=40, topics=6)
    x = x / x.norm(dim=1, keepdim=True)
    basis = _low_rank_basis(x, 6, seed=5)
    torch.testing.assert_close(basis, _low_rank_basis(x, 6, seed=5))
    state = torch.get_rng_state()
    _low_rank_basis(x, 6, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the global stream is untouched
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    top = vh[:6].T
    overlap = torch.linalg.svdvals(top.T @ basis)  # cosines of the principal angles
    assert overlap.min() > 0.99
    approx_idx, _ = topk_cosine(x, 5, approx_dim=6)
    assert recall(topk_cosine(x, 5)[0], approx_idx) >= 0.95


@pytest.mark.parametrize("path,key,value", [
    pytest.param("_topk_faiss", "knn_backend", "faiss", marks=needs_faiss),
    ("_topk_approx", "knn_approx_dim", 4),
])
def test_approximate_knn_keys_reach_mustrec_item_graph(monkeypatch, path, key, value):
    from recbole_mm.graphs import knn as knn_module
    from test_mustrec import FakeDataset, build

    calls = []
    real = getattr(knn_module, path)
    monkeypatch.setattr(knn_module, path, lambda *a, **k: calls.append(1) or real(*a, **k))
    dataset = FakeDataset(n_items=40)
    exact = build(dataset).item_item_graph.to_dense()
    assert not calls
    approximate = build(dataset, **{key: value}).item_item_graph.to_dense()
    assert len(calls) == 2  # one graph per modality
    assert ((approximate > 0) == (exact > 0)).float().mean() > 0.9


def test_mmsr_pca_by_scatter_eigenvectors_equals_the_svd_of_the_rows():
    from recbole_mm.model.layers.mmsr_codes import pca_reduce

    generator = torch.Generator().manual_seed(0)
    scales = torch.linspace(3.0, 0.1, 12)  # distinct variances: a unique principal basis up to signs
    x = torch.randn(200, 12, generator=generator) * scales + 1.0
    fit = torch.ones(200, dtype=torch.bool)
    fit[:20] = False
    reduced = pca_reduce(x, fit, 5)  # 180 rows > 12 dimensions: the eigh path
    centred = (x[fit] - x[fit].mean(0)).double()
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    expected = ((x - x[fit].mean(0)).double() @ vh[:5].T).float()
    torch.testing.assert_close(reduced.abs(), expected.abs(), atol=1e-4, rtol=1e-4)  # signs fixed separately
    wide = pca_reduce(x[:, :12].repeat(1, 20), fit, 5)  # 240 dimensions > 180 rows: the SVD path
    assert wide.shape == (200, 5)
