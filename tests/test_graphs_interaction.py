"""User-item adjacency, degree pruning, co-occurrence and k-means codes."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_mm.graphs import (DegreePruner, cooccurrence_matrix, kmeans, modality_codes,
                               user_item_adjacency)


def random_inter(n_users=30, n_items=40, density=0.15, seed=0):
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[0] = 0.0  # PAD user
    dense[:, 0] = 0.0  # PAD item
    return sp.csr_matrix(dense)


def test_user_item_adjacency_symmetric_bipartite_values():
    r = random_inter()
    u, i = r.shape
    a = user_item_adjacency(r).to_dense().double()
    assert torch.allclose(a, a.T)
    assert torch.all(a[:u, :u] == 0) and torch.all(a[u:, u:] == 0)
    block = a[:u, u:].numpy()
    assert np.array_equal(block > 0, r.toarray() > 0)  # edges = training interactions
    du = r.toarray().sum(1) + 1e-7
    di = r.toarray().sum(0) + 1e-7
    expect = r.toarray() / np.sqrt(du[:, None] * di[None, :])
    assert np.allclose(block, expect, atol=1e-6)


def test_pruner_count_subset_symmetry_and_kept_degree_normalisation():
    r = random_inter(60, 80, 0.2, seed=1)
    e = r.nnz
    pruner = DegreePruner(r, keep_ratio=0.3, seed=7)
    kept = pruner.sample_edges()
    assert kept.numel() == math.floor(e * 0.3)
    assert abs(kept.numel() / e - 0.3) <= 0.01
    assert kept.unique().numel() == kept.numel()  # distinct edges
    pruner2 = DegreePruner(r, keep_ratio=0.3, seed=7)
    a = pruner2.sample().to_dense().double()
    assert torch.allclose(a, a.T)
    u = r.shape[0]
    kept_r = np.zeros(r.shape, dtype=np.float32)
    kept_r[pruner.users[kept].numpy(), pruner.items[kept].numpy()] = 1
    assert np.all(kept_r <= r.toarray())  # subset of the training edges
    ref = user_item_adjacency(sp.csr_matrix(kept_r)).to_dense().double()
    assert torch.allclose(a, ref, atol=1e-6)  # renormalised with the kept degrees
    assert np.array_equal((a[:u, u:] > 0).numpy(), kept_r > 0)


def test_pruner_seed_reproduces_and_epochs_differ():
    r = random_inter(40, 50, 0.2, seed=2)
    p1, p2 = DegreePruner(r, 0.1, seed=3), DegreePruner(r, 0.1, seed=3)
    first = [p1.sample_edges() for _ in range(3)]
    second = [p2.sample_edges() for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])
    state = p1.state_dict()
    nxt = p1.sample_edges()
    p1.load_state_dict(state)
    assert torch.equal(p1.sample_edges(), nxt)
    assert not torch.equal(DegreePruner(r, 0.1, seed=4).sample_edges(), first[0])


def test_pruner_prefers_low_degree_edges():
    # user 1 is a hub linked to items 1..20; users 2..21 each hold one private leaf item
    n_users, n_items = 22, 41
    dense = np.zeros((n_users, n_items), dtype=np.float32)
    dense[1, 1:21] = 1
    for k in range(20):
        dense[2 + k, 21 + k] = 1
    pruner = DegreePruner(sp.csr_matrix(dense), keep_ratio=0.25, seed=0)
    hub = (pruner.users == 1).numpy()
    counts = np.zeros(pruner.n_edges)
    for _ in range(2000):
        counts[pruner.sample_edges().numpy()] += 1
    hub_rate, leaf_rate = counts[hub].mean() / 2000, counts[~hub].mean() / 2000
    # w_hub = 1/sqrt(20) vs w_leaf = 1: hub edges are kept much less often
    assert hub_rate < 0.5 * leaf_rate
    assert abs((counts.sum() / 2000) - 10) < 1e-9


def test_pruner_rejects_bad_ratio():
    with pytest.raises(ValueError, match="keep_ratio"):
        DegreePruner(random_inter(), 0.0)


# ---------------------------------------------------------------- co-occurrence

def test_cooccurrence_hand_case():
    # user with train [1, 2, 3] (valid 4, test 5 are not passed: training sequences only)
    o = cooccurrence_matrix([np.array([1, 2, 3])], 6, mode="all", weight="inverse_distance",
                            normalize="none").toarray()
    expect = np.zeros((6, 6))
    expect[1, 2] = expect[2, 1] = expect[2, 3] = expect[3, 2] = 1.0
    expect[1, 3] = expect[3, 1] = 0.5
    assert np.allclose(o, expect)
    count = cooccurrence_matrix([np.array([1, 2, 3])], 6, mode="all", weight="count",
                                normalize="none").toarray()
    assert np.array_equal(count > 0, expect > 0) and np.all(count[count > 0] == 1)
    adjacent = cooccurrence_matrix([np.array([1, 2, 3])], 6, mode="adjacent",
                                   normalize="none").toarray()
    assert adjacent[1, 3] == 0 and adjacent[1, 2] == 1 and adjacent[3, 2] == 1
    window = cooccurrence_matrix([np.array([1, 2, 3])], 6, mode="all", window=1,
                                 normalize="none").toarray()
    assert np.array_equal(window, adjacent)
    # repeats sum per position pair, self pairs skipped, PAD ignored
    rep = cooccurrence_matrix([np.array([0, 4, 5, 4]), np.array([4, 5])], 6, mode="all",
                              normalize="none").toarray()
    assert rep[4, 5] == 3 and rep[5, 4] == 3 and rep[4, 4] == 0 and rep[0].sum() == 0


def slow_cooccurrence(seqs, n, mode, weight, window):
    o = np.zeros((n, n))
    for s in seqs:
        s = [v for v in s if v != 0]
        for p in range(len(s)):
            for q in range(p + 1, len(s)):
                dist = q - p
                if mode == "adjacent" and dist > 1:
                    continue
                if window is not None and dist > window:
                    continue
                if s[p] == s[q]:
                    continue
                w = 1.0 if weight == "count" else 1.0 / dist
                o[s[p], s[q]] += w
                o[s[q], s[p]] += w
    return o


@pytest.mark.parametrize("mode,weight,window", [("all", "inverse_distance", None),
                                                ("all", "count", 3), ("adjacent", "count", None)])
def test_cooccurrence_matches_triple_loop(mode, weight, window):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 15, rng.integers(0, 12)) for _ in range(40)]
    ref = slow_cooccurrence(seqs, 15, mode, weight, window)
    got = cooccurrence_matrix(seqs, 15, mode=mode, weight=weight, window=window,
                              normalize="none").toarray()
    assert np.allclose(got, ref, atol=1e-5)
    row = cooccurrence_matrix(seqs, 15, mode=mode, weight=weight, window=window).toarray()
    sums = ref.sum(1)
    assert np.allclose(row.sum(1), (sums > 0).astype(float), atol=1e-5)
    sym = cooccurrence_matrix(seqs, 15, mode=mode, weight=weight, window=window,
                              normalize="sym").toarray()
    inv = np.where(sums > 0, 1 / np.sqrt(np.maximum(sums, 1e-30)), 0)
    assert np.allclose(sym, inv[:, None] * ref * inv[None, :], atol=1e-5)


# ---------------------------------------------------------------- k-means codes

def blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0], [-10.0, -10.0, 0]])
    labels = torch.arange(200) % 4
    return centres[labels] + 0.3 * torch.randn(200, 3, generator=g), labels


def test_kmeans_seeded_and_recovers_blobs():
    x, truth = blobs()
    c1, l1 = kmeans(x, 4, seed=11)
    c2, l2 = kmeans(x, 4, seed=11)
    assert torch.equal(c1, c2) and torch.equal(l1, l2)
    # each true blob maps to exactly one cluster and vice versa
    pairs = {(int(a), int(b)) for a, b in zip(truth, l1)}
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    for c in range(4):
        assert torch.allclose(c1[c], x[l1 == c].mean(0), atol=1e-4)


def test_kmeans_reseeds_empty_clusters():
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5 + [[50.0, 50.0]])
    centres, labels = kmeans(x, 3, seed=0)
    assert torch.bincount(labels, minlength=3).min() >= 1


def test_modality_codes_reproducible_fit_mask_and_invalid_rows():
    x, _ = blobs(1)
    x = torch.cat([torch.zeros(1, 3), x])  # row 0 = PAD
    fit = torch.zeros(201, dtype=torch.bool)
    fit[1:150] = True
    valid = torch.ones(201, dtype=torch.bool)
    valid[[0, 5]] = False
    a = modality_codes(x, 4, 2, seed=3, fit_mask=fit, valid_mask=valid)
    b = modality_codes(x, 4, 2, seed=3, fit_mask=fit, valid_mask=valid)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    centres, codes, weights = a
    assert codes.shape == (201, 2) and torch.all(codes[[0, 5]] == -1)
    assert torch.all(codes[valid] >= 0) and torch.all(codes[valid, 0] != codes[valid, 1])
    assert torch.all(weights[valid, 0] >= weights[valid, 1])
    # centres depend only on the fitted rows: changing an unfitted item changes nothing
    x2 = x.clone()
    x2[160:] += 100.0
    c2, codes2, _ = modality_codes(x2, 4, 2, seed=3, fit_mask=fit, valid_mask=valid)
    assert torch.equal(c2, centres) and torch.equal(codes2[:150], codes[:150])
    # cosine assignment: the first code is the centre with the largest cosine
    cn = centres / centres.norm(dim=1, keepdim=True)
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    assert torch.equal(codes[valid, 0], (xn[valid] @ cn.T).argmax(1))
    eu = modality_codes(x, 4, 1, seed=3, fit_mask=fit, valid_mask=valid, assign="euclidean")
    assert torch.equal(eu[1][valid, 0], torch.cdist(x[valid], centres).argmin(1))
