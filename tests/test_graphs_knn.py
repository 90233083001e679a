"""kNN and normalisation tests against slow, obviously-correct dense references."""
import numpy as np
import pytest
import torch

from recbole_mm.graphs import knn_graph, row_normalize, sym_normalize, topk_cosine, weighted_sum
from recbole_mm.graphs.knn import normalize_rows


def reference_topk(features, k, mode="include", valid=None):
    """Dense float64 cosine, ties by lower index, via numpy lexsort on every row."""
    x = features.double().numpy()
    n = x.shape[0]
    norms = np.linalg.norm(x, axis=1)
    ok = norms > 0 if valid is None else (norms > 0) & valid.numpy()
    xn = np.where(ok[:, None], x / np.maximum(norms, 1e-300)[:, None], 0.0)
    sim = xn @ xn.T
    out = np.full((n, k), -1)
    for i in range(n):
        if not ok[i]:
            continue
        cand = [j for j in range(n) if ok[j] and (mode == "include" or j != i)]
        cand = np.array(cand)
        order = np.lexsort((cand, -sim[i, cand]))  # primary: -sim, secondary: index
        take = cand[order[:k]]
        out[i, :len(take)] = take
    return out


def sign_features(n, d, seed):
    """Rows of +-1 (norm sqrt(d), d a power of 4): cosines are exact multiples of 1/d, so
    float32 and float64 agree bit for bit and ties are everywhere."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, d), generator=g).float() * 2 - 1


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
@pytest.mark.parametrize("mode", ["include", "exclude"])
def test_topk_matches_bruteforce_with_ties_and_duplicates(chunk_size, mode):
    x = sign_features(120, 16, seed=3)
    x[50] = x[10]  # duplicate rows
    x[90] = x[10]
    x[0] = 0.0  # a zero row is never a neighbour
    k = 6
    idx, val = topk_cosine(x, k, include_self=(mode == "include"), chunk_size=chunk_size)
    ref = reference_topk(x, k, mode)
    assert np.array_equal(idx.numpy(), ref)
    # values are the cosines of the chosen neighbours, descending
    xn = normalize_rows(x)
    for i in range(1, 120):
        expect = (xn[i] * xn[idx[i]]).sum(1)
        assert torch.allclose(val[i], expect, atol=1e-6)
        assert torch.all(val[i][:-1] >= val[i][1:])
    assert torch.all(idx[0] == -1)


def test_ties_beyond_candidate_set_resolved_by_lower_index():
    # 40 identical rows: every row ties with 39 others, far more than the k+8 candidates
    x = torch.ones(40, 4)
    x[:, 0] = 2.0
    idx, _ = topk_cosine(x, 3, include_self=False, chunk_size=5)
    expect = [[j for j in range(40) if j != i][:3] for i in range(40)]
    assert idx.tolist() == expect


def test_random_gaussian_matches_dense_argsort():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 24, generator=g)
    idx, _ = topk_cosine(x, 10, chunk_size=33)
    xn = normalize_rows(x)
    sim = xn @ xn.T
    ref = torch.topk(sim, 10, dim=1).indices
    assert torch.equal(idx, ref)


def test_valid_mask_rows_and_columns():
    x = sign_features(60, 16, seed=1)
    valid = torch.ones(60, dtype=torch.bool)
    valid[[0, 7, 33]] = False
    idx, val = topk_cosine(x, 5, valid_mask=valid, chunk_size=8)
    assert np.array_equal(idx.numpy(), reference_topk(x, 5, "include", valid))
    for bad in (0, 7, 33):
        assert torch.all(idx[bad] == -1) and torch.all(val[bad] == 0)
        assert not (idx == bad).any()


def test_k_clamped_with_warning():
    x = torch.randn(5, 3)
    with pytest.warns(UserWarning, match="clamped"):
        idx, _ = topk_cosine(x, 8, include_self=False)
    assert idx.shape == (5, 8)
    assert torch.all(idx[:, :4] >= 0) and torch.all(idx[:, 4:] == -1)


def test_knn_graph_structure_pad_and_missing_rows():
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    x[0] = 0.0  # PAD
    valid = torch.ones(12, dtype=torch.bool)
    valid[[0, 4]] = False  # item 4 has no feature
    k = 3
    dense = knn_graph(x, k, include_self=True, valid_mask=valid).to_dense()
    assert torch.all(dense[0] == 0) and torch.all(dense[:, 0] == 0)  # PAD: no edges at all
    assert dense[4].tolist() == [1.0 if j == 4 else 0.0 for j in range(12)]  # self loop only
    assert torch.all(dense[:, 4].sum() == 1)  # never anyone else's neighbour
    real = [i for i in range(12) if valid[i]]
    assert torch.all(dense[real].sum(1) == k)
    assert torch.all(dense[real, real] == 1)  # self included (cosine 1, no duplicates)
    # directed: some pair is not mutual
    assert not torch.equal(dense, dense.T)

    excl = knn_graph(x, k, include_self=False, valid_mask=valid).to_dense()
    assert torch.all(excl[real, real] == 0) and torch.all(excl[real].sum(1) == k)
    add = knn_graph(x, k, include_self="add", valid_mask=valid).to_dense()
    assert torch.all(add[real].sum(1) == k + 1) and torch.all(add[real, real] == 1)
    assert torch.equal(add - torch.diag(torch.diag(add)), excl - torch.diag(torch.diag(excl)))
    empty = knn_graph(x, k, valid_mask=valid, invalid_rows="empty").to_dense()
    assert torch.all(empty[4] == 0)


def test_sym_normalize_matches_dense_formula_and_topk_gives_one_over_k():
    torch.manual_seed(1)
    x = torch.randn(30, 6)
    x[0] = 0
    g = knn_graph(x, 4, valid_mask=torch.arange(30) > 0)
    s = sym_normalize(g).to_dense()
    a = g.to_dense()
    d = a.sum(1) + 1e-7
    ref = a / d.sqrt().unsqueeze(1) / d.sqrt().unsqueeze(0)
    assert torch.allclose(s, ref, atol=1e-7)
    vals = s[a > 0]
    assert torch.allclose(vals, torch.full_like(vals, 0.25), atol=1e-6)
    assert torch.allclose(s[1:].sum(1), torch.ones(29), atol=1e-5)  # row-stochastic here
    assert s[0].sum() == 0 and not torch.isnan(s).any()


def test_row_normalize_and_weighted_sum():
    a = torch.tensor([[0, 2.0, 2.0], [0, 0, 0], [1.0, 3.0, 0]]).to_sparse()
    r = row_normalize(a).to_dense()
    assert torch.allclose(r.sum(1), torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(r[2], torch.tensor([0.25, 0.75, 0.0]))
    b = torch.eye(3).to_sparse()
    w = weighted_sum([a, b], [0.1, 0.9]).to_dense()
    assert torch.allclose(w, 0.1 * a.to_dense() + 0.9 * torch.eye(3))
    # an absent modality (None) leaves only the other graph
    assert torch.allclose(weighted_sum([None, b], [0.1, 0.9]).to_dense(), 0.9 * torch.eye(3))


def test_approximate_mode_recall_exact_values_and_all_candidates_equals_exact(monkeypatch):
    from recbole_mm.graphs import knn

    monkeypatch.setattr(knn, "GROUP_ROWS", 64)  # several groups of alike rows at this size
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(20, 64, generator=g)
    x = centres[torch.randint(0, 20, (800,), generator=g)] + 0.6 * torch.randn(800, 64, generator=g)
    x[3] = 0.0  # a zero row stays out in both modes
    exact, exact_val = topk_cosine(x, 10, chunk_size=100)
    for mode in ("include", "exclude"):
        ref, _ = topk_cosine(x, 10, include_self=mode)
        approx, approx_val = topk_cosine(x, 10, include_self=mode, approx_dim=16, seed=0)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref, approx))
        assert hits / ref.numel() >= 0.95
        assert torch.all(approx[3] == -1) and not (approx == 3).any()
        if mode == "exclude":
            assert not (approx == torch.arange(800).unsqueeze(1)).any()
    # reported values are exact cosines of the reported neighbours
    xn = normalize_rows(x)
    assert torch.allclose(approx_val[5], (xn[5] * xn[approx[5]]).sum(1), atol=1e-5)
    # with every item a candidate the result is exact (ties included)
    full, _ = topk_cosine(x, 10, approx_dim=16, approx_candidates=10**6)
    assert torch.equal(full, exact)
    s = sign_features(200, 16, seed=4)
    assert torch.equal(topk_cosine(s, 6, approx_dim=4, approx_candidates=10**6)[0], topk_cosine(s, 6)[0])
    again, _ = topk_cosine(x, 10, include_self="exclude", approx_dim=16, seed=0)
    assert torch.equal(approx, again)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = sign_features(500, 64, seed=2)
    cpu, _ = topk_cosine(x, 10, chunk_size=128)
    gpu, _ = topk_cosine(x.cuda(), 10, chunk_size=128)
    assert torch.equal(cpu, gpu.cpu())
