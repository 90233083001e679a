"""MDSRec tests: hand-computed references for every equation and switch (docs/models/MDSRec.md).

Unit tests use a tiny in-memory dataset with the contract attributes; the end-to-end tests
build real RecBole splits from small files written into tmp_path.
"""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from recbole_mm.model.layers.interest_attention import (
    InterestCentralisedAttention, centre_relation_weights, relation_noise)
from recbole_mm.model.layers.mdsrec_item_graphs import inject_behaviour
from recbole_mm.model.mdsrec import MDSRec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_YAML = os.path.join(ROOT, "properties", "model", "MDSRec.yaml")
SCIENTIFIC = os.path.join(ROOT, "..", "shared", "datasets", "scientific")
SMALL = dict(embedding_size=16, inner_size=32, n_centers=4, knn_k=3, MAX_ITEM_LIST_LENGTH=10)


# ----------------------------------------------------------------------------- helpers
class TinyDataset:
    """The dataset contract (docs/architecture.md) on in-memory data."""

    def __init__(self, sequences, features, masks=None, cache_dir=None, fingerprint="tiny"):
        self.item_num = next(iter(features.values())).shape[0]
        self.user_num = len(sequences)
        self.modalities = list(features)
        self.item_features = {m: f.float() for m, f in features.items()}
        if masks is None:
            masks = {m: f.norm(dim=1) > 0 for m, f in features.items()}
        for mask in masks.values():
            mask[0] = False
        self.item_feature_mask = masks
        self._sequences = [np.asarray(s, dtype=np.int64) for s in sequences]
        self.fingerprint = fingerprint
        self.graph_cache_dir = cache_dir
        self.split_name = "train"

    def train_sequences(self):
        return self._sequences

    def num(self, field):
        return self.item_num


def make_config(**overrides):
    with open(MODEL_YAML, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config.update(USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", LIST_SUFFIX="_list",
                  ITEM_LIST_LENGTH_FIELD="item_length", NEG_PREFIX="neg_", device="cpu", seed=2020)
    config.update(SMALL)
    config.update(overrides)
    return config


def tiny_data(n_items=40, n_users=30, modalities=("text", "image"), seed=0):
    rng = np.random.default_rng(seed)
    sequences = [[]] + [rng.integers(1, n_items, size=rng.integers(4, 14)).tolist() for _ in range(n_users)]
    gen = torch.Generator().manual_seed(seed)
    dims = {"text": 12, "image": 7, "genre": 5}
    features = {m: torch.randn(n_items, dims[m], generator=gen) for m in modalities}
    for f in features.values():
        f[0] = 0
    return sequences, features


def build(seed=0, data=None, dataset_kwargs=None, **overrides):
    sequences, features = data or tiny_data()
    torch.manual_seed(seed)
    return MDSRec(make_config(**overrides), TinyDataset(sequences, features, **(dataset_kwargs or {})))


def batch(n_items=40, size=5, length=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items, (size, length), generator=gen)
    lengths = torch.randint(1, length + 1, (size,), generator=gen)
    lengths[0] = length
    for b in range(size):
        seq[b, lengths[b]:] = 0
    target = torch.randint(1, n_items, (size,), generator=gen)
    return {"item_id_list": seq, "item_length": lengths, "item_id": target}


def dense(model, prefix):
    return model._sparse(prefix).to_dense()


def no_dropout(**kw):
    return dict(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, **kw)


def full_scores(model, inter):
    model.eval()
    with torch.no_grad():
        return model.full_sort_predict(inter)


def reference_cooccurrence(sequences, n_items, weight="inverse_distance", window=None):
    """Slow, obviously correct Eq. 1-2."""
    out = np.zeros((n_items, n_items))
    for seq in sequences:
        for p in range(len(seq)):
            for q in range(p + 1, len(seq)):
                if seq[p] == seq[q] or (window is not None and q - p > window):
                    continue
                w = 1.0 if weight == "count" else 1.0 / (q - p)
                out[seq[p], seq[q]] += w
                out[seq[q], seq[p]] += w
    return out


# ----------------------------------------------------------------------------- 1. co-occurrence
def test_cooccurrence_by_hand_counts_window_and_repeats():
    data = ([[], [1, 2, 3]], tiny_data(n_items=6)[1])
    o = dense(build(data=data, cooc_norm="none"), "cooc")
    assert o[1, 2] == 1 and o[2, 3] == 1 and o[1, 3] == 0.5
    assert torch.equal(o, o.t()) and torch.all(o.diagonal() == 0)
    assert torch.all(o[4] == 0) and torch.all(o[5] == 0)
    count = dense(build(data=data, cooc_norm="none", cooc_weight="count"), "cooc")
    assert count[1, 3] == 1 and torch.equal(count > 0, o > 0)  # w/o DIS: values change, not pattern
    assert dense(build(data=data, cooc_norm="none", cooc_window=1), "cooc")[1, 3] == 0
    repeats = dense(build(data=([[], [1, 2, 1]], data[1]), cooc_norm="none"), "cooc")
    assert repeats[1, 2] == 2 and repeats[1, 1] == 0  # two position pairs, self pair skipped


@pytest.mark.parametrize("weight,window", [("inverse_distance", None), ("count", None), ("inverse_distance", 3)])
def test_cooccurrence_matches_triple_loop_reference(weight, window):
    sequences, features = tiny_data(seed=3)
    model = build(data=(sequences, features), cooc_norm="none", cooc_weight=weight, cooc_window=window)
    expected = reference_cooccurrence(sequences, 40, weight, window)
    assert np.allclose(dense(model, "cooc").numpy(), expected, atol=1e-5)


# ----------------------------------------------------------------------------- 2. normalisation
def test_cooccurrence_normalisations_and_injection():
    sequences, features = tiny_data(seed=4)
    sequences.append([])  # a user without items
    raw = torch.tensor(reference_cooccurrence(sequences, 40), dtype=torch.float32)
    row = dense(build(data=(sequences, features), cooc_norm="row"), "cooc")
    sums = raw.sum(1)
    assert torch.allclose(row.sum(1), (sums > 0).float(), atol=1e-5)
    sym = dense(build(data=(sequences, features), cooc_norm="sym"), "cooc")
    inv = torch.where(sums > 0, sums.rsqrt(), torch.zeros_like(sums))
    assert torch.allclose(sym, inv[:, None] * raw * inv[None, :], atol=1e-6)
    e = features["text"]
    assert torch.allclose(inject_behaviour(row.to_sparse(), e, 0.2), 0.2 * row @ e + e, atol=1e-5)


# ----------------------------------------------------------------------------- 3. modal graphs
def reference_topk(features, mask, h, self_mode):
    x = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = (x @ x.t()).double()
    sim[:, ~mask] = -math.inf
    if self_mode != "include":
        sim.fill_diagonal_(-math.inf)
    out = {}
    for i in torch.nonzero(mask).flatten().tolist():
        order = sorted(range(len(sim)), key=lambda j: (-float(sim[i, j]), j))
        out[i] = set(order[:h]) | ({i} if self_mode == "add" else set())
    return out


@pytest.mark.parametrize("self_mode", ["include", "exclude", "add"])
@pytest.mark.parametrize("use_cre", [True, False])
def test_modal_graph_is_top_h_of_injected_cosine(self_mode, use_cre):
    sequences, features = tiny_data(seed=5)
    features["text"][7] = 0  # an item without text: never a neighbour, keeps a self loop
    model = build(data=(sequences, features), knn_self=self_mode, use_cre_graph=use_cre, mu_modal=0.5,
                  knn_k=4, graph_norm="none")
    graph = dense(model, "graph_text")
    mask = features["text"].norm(dim=1) > 0
    mask[0] = False
    cooc = dense(build(data=(sequences, features)), "cooc")
    source = 0.5 * cooc @ features["text"] + features["text"] if use_cre else features["text"]
    expected = reference_topk(source, mask, 4, self_mode)
    for i, neighbours in expected.items():
        assert set(torch.nonzero(graph[i]).flatten().tolist()) == neighbours
        assert len(neighbours) == (5 if self_mode == "add" else 4)
        assert (i in neighbours) == (self_mode != "exclude")
    assert graph[0].sum() == 0 and graph[:, 0].sum() == 0  # PAD: no row, never a neighbour
    assert graph[:, 7].sum() == graph[7, 7] == 1  # missing item: only its own self loop


def test_graph_sym_values_and_h_zero():
    model = build(knn_k=3)
    graph = dense(model, "graph_image")
    values = graph[graph > 0]
    assert torch.allclose(values, torch.full_like(values, 1 / 3), atol=1e-5)  # exact top-H, sym = 1/H
    assert (graph > 0).sum(1)[1:].eq(3).all()
    assert dense(build(knn_k=0), "graph_image").sum() == 0


def test_knn_k_at_least_catalogue_is_clamped_with_warning():
    with pytest.warns(UserWarning, match="clamped"):
        model = build(knn_k=100, graph_norm="none")
    assert (dense(model, "graph_text") > 0).sum(1)[1:].eq(39).all()


def test_approximate_knn_mode_keeps_h_neighbours():
    exact = dense(build(graph_norm="none"), "graph_text") > 0
    approx = dense(build(graph_norm="none", knn_approx_dim=6), "graph_text") > 0
    assert approx.sum(1)[1:].eq(3).all()
    assert (approx & exact).sum() >= 0.9 * exact.sum()  # candidates re-ranked exactly


def test_without_mrgc_missing_features_project_to_zero():
    sequences, features = tiny_data()
    features["text"][5] = 0
    model = build(data=(sequences, features), use_mrgc=False)
    modal = model.item_tables()[1]["text"]
    assert torch.all(modal[5] == 0) and torch.all(modal[0] == 0) and modal[6].abs().sum() > 0
    assert model.centre_labels_text[5] == -1  # not clustered either


# ----------------------------------------------------------------------------- 4. propagation
def test_propagation_equals_dense_and_gradients_reach_only_neighbours():
    model = build()
    _, modal, _ = model.item_tables()
    graph = dense(model, "graph_text")
    assert torch.allclose(modal["text"], graph @ model.item_embedding.weight, atol=1e-6)
    injected_id = model.injected_id_embeddings()
    cooc = dense(model, "cooc")
    weight = model.item_embedding.weight
    assert torch.allclose(injected_id, weight + 16.0 * cooc @ weight, atol=1e-5)
    item = 5
    grad = torch.autograd.grad(modal["text"][item].sum(), model.item_embedding.weight)[0]
    touched = set(torch.nonzero(grad.abs().sum(1)).flatten().tolist())
    assert touched == set(torch.nonzero(graph[item]).flatten().tolist())


def test_graph_input_injected_propagates_injected_ids():
    model = build(graph_input="injected")
    _, modal, _ = model.item_tables()
    assert torch.allclose(modal["text"], dense(model, "graph_text") @ model.injected_id_embeddings(), atol=1e-5)


# ----------------------------------------------------------------------------- 5. k-means centres
def test_kmeans_labels_seeded_complete_and_centres_are_member_means():
    a, b = build(seed=0), build(seed=1)  # the k-means seed is the config seed, not torch's
    labels = a.centre_labels_text
    assert torch.equal(labels, b.centre_labels_text)
    assert labels[0] == -1 and labels[1:].ge(0).all() and labels.max() < 4
    assert len(set(labels[1:].tolist())) == 4
    _, modal, centres = a.item_tables()
    assignment = torch.zeros(4, 40)
    assignment[labels[1:], torch.arange(1, 40)] = 1
    mean = assignment / assignment.sum(1, keepdim=True)
    assert torch.allclose(mean.sum(1), torch.ones(4))
    assert torch.allclose(centres["text"], mean @ modal["text"], atol=1e-6)
    summed = build(center_assign="sum").item_tables()[2]["text"]
    assert torch.allclose(summed, assignment @ modal["text"], atol=1e-5)


def test_kmeans_recovers_separated_blobs():
    gen = torch.Generator().manual_seed(0)
    blob = torch.arange(40) % 4
    text = torch.eye(12)[blob] * 10 + 0.01 * torch.randn(40, 12, generator=gen)
    text[0] = 0
    model = build(data=(tiny_data()[0], {"text": text}))
    labels = model.centre_labels_text[1:]
    for c in range(4):
        assert len(set(labels[blob[1:] == c].tolist())) == 1
    assert len(set(labels.tolist())) == 4


# ----------------------------------------------------------------------------- 6. centre attention
def reference_centre_attention(centres, states, pad, tower, ffn_layers, n_heads, scale_dim):
    """Eq. 12-15 written head by head with explicit weights."""
    z = centres.unsqueeze(0).expand(states[0].size(0), -1, -1)
    for layer, h, ffn in zip(tower.layer, states, ffn_layers):
        att = layer.multi_head_attention
        d = z.size(-1)
        dh = d // n_heads
        heads = []
        for i in range(n_heads):
            sl = slice(i * dh, (i + 1) * dh)
            q = z @ att.query.weight[sl].t() + att.query.bias[sl]
            k = h @ att.key.weight[sl].t() + att.key.bias[sl]
            v = h @ att.value.weight[sl].t() + att.value.bias[sl]
            a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(scale_dim(dh, d)) + pad[:, 0], dim=-1)
            heads.append(a @ v)
        g = torch.cat(heads, -1) @ att.dense.weight.t() + att.dense.bias
        z = F.gelu(ffn.ffn_out(ffn.ffn_in(g)))
    return z


@pytest.mark.parametrize("scale", ["head", "model"])
def test_centre_attention_matches_reference_and_owns_no_qkv(scale):
    from recbole.model.layers import TransformerEncoder

    torch.manual_seed(0)
    tower = TransformerEncoder(2, 2, 16, 32, 0.0, 0.0, "gelu", 1e-12)
    ica = InterestCentralisedAttention(2, 16, 32, 0.0, "gelu", 1e-12, attn_scale=scale)
    names = [n for n, _ in ica.named_parameters()]
    assert not any(k in n for n in names for k in ("query", "key", "value"))
    assert sum(p.numel() for p in ica.parameters()) == 2 * (16 * 32 + 32 + 32 * 16 + 16)
    states = [torch.randn(3, 6, 16), torch.randn(3, 6, 16)]
    seq = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 0, 0, 0, 0], [7, 0, 0, 0, 0, 0]])
    pad = torch.where(seq != 0, 0.0, -10000.0)[:, None, None, :]
    centres = torch.randn(4, 16)
    out = ica(centres, states, pad, tower)
    assert out.shape == (3, 4, 16)
    scale_dim = (lambda dh, d: dh) if scale == "head" else (lambda dh, d: d)
    assert torch.allclose(out, reference_centre_attention(centres, states, pad, tower, ica.layers, 2, scale_dim),
                          atol=1e-5)
    # PAD contents are irrelevant
    noisy = [s.clone() for s in states]
    for s in noisy:
        s[seq == 0] = torch.randn(int((seq == 0).sum()), 16)
    assert torch.allclose(ica(centres, noisy, pad, tower), out, atol=1e-6)
    # the tower's query weights drive the centres; layer 2 reads the second state list
    with torch.no_grad():
        tower.layer[0].multi_head_attention.query.weight.add_(0.5)
    assert not torch.allclose(ica(centres, states, pad, tower), out)
    states[1] = states[1] + 1.0
    assert not torch.allclose(ica(centres, states, pad, tower), ica(centres, [states[0], states[1] - 1.0], pad, tower))


def test_centre_switches_change_parameters():
    base = build(**no_dropout())
    own_u = build(center_share_out_proj=False, **no_dropout())
    residual = build(center_ffn="residual", **no_dropout())
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(own_u) == count(base) + 2 * 2 * (16 * 16 + 16)  # one U per layer and modality
    assert count(residual) == count(base) + 2 * 2 * 2 * 32  # two LayerNorms per layer and modality
    no_ica = build(use_ica=False)
    assert not hasattr(no_ica, "centre_attention") and not hasattr(no_ica, "centre_labels_text")


# ----------------------------------------------------------------------------- 7. Gumbel relation
def test_gumbel_relation_training_soft_eval_documented():
    logits = torch.randn(6, 5, requires_grad=True)
    torch.manual_seed(0)
    soft = centre_relation_weights(logits, 1.0, training=True)
    assert torch.allclose(soft.sum(1), torch.ones(6)) and (soft < 1).all() and (soft > 0).all()
    torch.manual_seed(1)
    assert not torch.allclose(centre_relation_weights(logits, 1.0, training=True), soft)
    torch.manual_seed(0)
    assert torch.equal(centre_relation_weights(logits, 1.0, training=True), soft)
    evaluated = centre_relation_weights(logits, 0.5, training=False)
    assert torch.allclose(evaluated, torch.softmax(logits / 0.5, 1))  # soft: no noise
    assert torch.equal(evaluated, centre_relation_weights(logits, 0.5, training=False))
    hard_eval = centre_relation_weights(logits, 1.0, training=False, eval_mode="hard")
    assert torch.equal(hard_eval, F.one_hot(logits.argmax(1), 5).float())
    cold = centre_relation_weights(logits, 1e-3, noise="none", training=True)
    assert torch.allclose(cold.max(1).values, torch.ones(6), atol=1e-3)
    hard = centre_relation_weights(logits, 1.0, hard=True, training=True)
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0} and torch.equal(hard.sum(1), torch.ones(6))
    (hard * torch.randn(6, 5)).sum().backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="gumbel_eval"):
        centre_relation_weights(logits, 1.0, training=False, eval_mode="bogus")


def test_relation_noise_moments():
    torch.manual_seed(0)
    logistic = relation_noise((200000,), "logistic")
    assert abs(logistic.mean()) < 0.03 and abs(logistic.var() - math.pi ** 2 / 3) < 0.08
    gumbel = relation_noise((200000,), "gumbel")
    assert abs(gumbel.mean() - 0.5772) < 0.03 and abs(gumbel.var() - math.pi ** 2 / 6) < 0.05
    assert torch.equal(relation_noise((3,), "none"), torch.zeros(3))


def test_model_noise_only_in_training_and_eval_deterministic():
    model = build(initializer_range=0.3, **no_dropout())  # large enough centres to see the noise
    inter = batch()
    model.train()
    torch.manual_seed(0)
    first = model.calculate_loss(inter)
    torch.manual_seed(1)
    assert abs(first - model.calculate_loss(inter)) > 1e-3  # Gumbel noise at training
    assert torch.equal(full_scores(model, inter), full_scores(model, inter))
    quiet = build(gumbel_noise="none", **no_dropout())
    quiet.train()
    assert torch.equal(quiet.calculate_loss(inter), quiet.calculate_loss(inter))


# ----------------------------------------------------------------------------- 8. rho and the loss
def test_loss_is_rho_weighted_channel_cross_entropy():
    rho = {"text": 0.3, "image": 0.7}
    model = build(rho=rho, gumbel_noise="none", **no_dropout())
    inter = batch()
    logits = model.channel_logits(inter["item_id_list"], inter["item_length"])
    target = inter["item_id"]
    expected = F.cross_entropy(logits["id"], target) + sum(rho[m] * F.cross_entropy(logits[m], target) for m in rho)
    assert torch.allclose(model.calculate_loss(inter), expected, atol=1e-6)
    fused = build(rho=rho, gumbel_noise="none", loss_on_fused=True, **no_dropout())
    fused_logits = fused.fuse_scores(logits)
    assert torch.allclose(fused.calculate_loss(inter), expected + F.cross_entropy(fused_logits, target), atol=1e-5)
    scores = full_scores(model, inter)
    model.eval()
    with torch.no_grad():
        channels = model.channel_logits(inter["item_id_list"], inter["item_length"])
    assert torch.allclose(scores, channels["id"] + 0.3 * channels["text"] + 0.7 * channels["image"], atol=1e-5)


def test_rho_changes_loss_and_scores_and_is_validated():
    inter = batch()
    a = build(rho={"text": 0.5, "image": 0.5}, gumbel_noise="none", **no_dropout())
    b = build(rho={"text": 0.9, "image": 0.1}, gumbel_noise="none", **no_dropout())
    assert not torch.isclose(a.calculate_loss(inter), b.calculate_loss(inter))
    assert not torch.allclose(full_scores(a, inter), full_scores(b, inter))
    with pytest.raises(ValueError, match="rho"):
        build(rho={"text": 0.5, "image": 0.6})
    with pytest.raises(ValueError, match="rho"):
        build(rho={"text": 1.0})
    sequences, features = tiny_data(modalities=("text",))
    single = build(data=(sequences, features))
    assert single.rho == {"text": 1.0} and torch.isfinite(single.calculate_loss(inter))


def test_modalities_subset_and_errors():
    model = build(modalities=["image"])
    assert model.modalities == ["image"] and not hasattr(model, "graph_text_indices")
    with pytest.raises(ValueError, match="modalities"):
        build(modalities=["audio"])
    with pytest.raises(ValueError, match="loss_type"):
        build(loss_type="BPR")
    with pytest.raises(ValueError, match="knn_self"):
        build(knn_self="sometimes")


# ----------------------------------------------------------------------------- 9. switches
SWITCHES = [
    dict(cooc_weight="count"), dict(cooc_window=1), dict(cooc_norm="sym"), dict(mu_id=0.0), dict(mu_modal=5.0),
    dict(use_cre_graph=False), dict(use_mrgc=False), dict(knn_k=6), dict(knn_self="exclude"), dict(knn_self="add"),
    dict(graph_norm="none"), dict(graph_input="injected"), dict(use_ica=False), dict(n_centers=2),
    dict(kmeans_on="injected", _base=dict(mu_modal=5.0)), dict(center_assign="sum"), dict(center_share_out_proj=False),
    dict(center_attn_scale="model"), dict(center_ffn="residual"), dict(gumbel_tau=0.1), dict(gumbel_eval="hard"),
    dict(score_item_emb="injected"), dict(share_towers=True), dict(share_position=False),
    dict(rho={"text": 0.8, "image": 0.2}),
]


def test_every_switch_changes_full_sort_output():
    inter = batch()
    wide = dict(initializer_range=0.3)  # at std 0.02 the centre branch moves scores by ~1e-6 only
    references = {}
    for switch in SWITCHES:
        switch = dict(switch)
        base = dict(wide, **switch.pop("_base", {}))
        key = tuple(sorted(base.items()))
        if key not in references:
            references[key] = full_scores(build(**base), inter)
        assert not torch.allclose(full_scores(build(**dict(base, **switch)), inter), references[key], atol=1e-4), switch


def test_ablation_switches_do_what_they_claim():
    sequences, features = tiny_data()
    plain = build(data=(sequences, features), use_cre_graph=False, graph_norm="none")
    mask = features["text"].norm(dim=1) > 0
    mask[0] = False
    expected = reference_topk(features["text"], mask, 3, "include")
    graph = dense(plain, "graph_text")
    assert all(set(torch.nonzero(graph[i]).flatten().tolist()) == nb for i, nb in expected.items())
    assert not torch.equal(graph, dense(build(data=(sequences, features), mu_modal=5.0, graph_norm="none"),
                                        "graph_text"))  # mu_modal moves the graph
    no_mrgc = build(use_mrgc=False)
    assert not hasattr(no_mrgc, "graph_text_indices") and "text" in no_mrgc.modal_projections
    _, modal, _ = no_mrgc.item_tables()
    proj = no_mrgc.modal_projections["text"]
    assert torch.allclose(modal["text"][1:], proj(features["text"][1:]), atol=1e-6)
    no_ica = build(use_ica=False, gumbel_noise="none", **no_dropout())
    inter = batch()
    no_ica.eval()
    fused, centred, _ = no_ica.forward(inter["item_id_list"], inter["item_length"])
    states = {m: no_ica._encode(m, no_ica.item_tables()[1][m], inter["item_id_list"], inter["item_length"],
                                no_ica.get_attention_mask(inter["item_id_list"]))[0] for m in ("text", "image")}
    assert all(torch.allclose(centred[m], states[m]) for m in states)  # ẽ^m = e^m


# ----------------------------------------------------------------------------- 10. consistency
def test_full_sort_predict_equals_predict_over_all_items():
    model = build()
    inter = batch(size=3)
    scores = full_scores(model, inter)
    every = {k: v.repeat_interleave(40, dim=0) for k, v in inter.items()}  # row b*40+j asks item j
    every["item_id"] = torch.arange(40).repeat(3)
    with torch.no_grad():
        predicted = model.predict(every).view(3, 40)
    assert torch.allclose(predicted, scores, atol=1e-5)


def test_tower_state_ignores_later_positions_and_other_rows():
    model = build(**no_dropout())
    model.eval()
    inter = batch(size=4)
    seq, lengths = inter["item_id_list"], inter["item_length"]
    mask = model.get_attention_mask(seq)
    table = model.item_tables()[0]
    _, layer_inputs, _ = model._encode("id", table, seq, lengths, mask)
    full_out = model.towers["id"](layer_inputs[0], mask)[-1]
    cut = seq.clone()
    cut[0, 4:] = 0  # row 0 truncated to 4 items: positions < 4 must not change
    cut_out = model.towers["id"](model._encode("id", table, cut, lengths, model.get_attention_mask(cut))[1][0],
                                 model.get_attention_mask(cut))[-1]
    assert torch.allclose(cut_out[0, :4], full_out[0, :4], atol=1e-5)
    assert torch.allclose(cut_out[1:], full_out[1:], atol=1e-6)
    single = {k: v[1:2] for k, v in inter.items()}
    assert torch.allclose(full_scores(model, single)[0], full_scores(model, inter)[1], atol=1e-5)


# ----------------------------------------------------------------------------- 11. determinism, cache
def test_same_seed_same_model_and_loss_after_two_steps(tmp_path):
    def run():
        model = build(seed=7, dataset_kwargs={"cache_dir": str(tmp_path)})
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(3)
        for _ in range(2):
            optimiser.zero_grad()
            loss = model.calculate_loss(batch())
            loss.backward()
            optimiser.step()
        return model, loss.detach()

    first, loss_a = run()
    files = sorted(os.listdir(tmp_path))
    second, loss_b = run()  # second build reads the cache
    assert sorted(os.listdir(tmp_path)) == files and len(files) == 5  # O, 2 graphs, 2 label sets
    assert torch.equal(loss_a, loss_b)
    for name, buffer in first.named_buffers():
        assert torch.equal(buffer, dict(second.named_buffers())[name]), name
    uncached = build(seed=7)
    for name, buffer in uncached.named_buffers():
        assert torch.equal(buffer, dict(first.named_buffers())[name]), name


def test_cache_key_tracks_settings_and_split(tmp_path):
    def files(**kw):
        build(dataset_kwargs={"cache_dir": str(tmp_path), "fingerprint": kw.pop("fingerprint", "tiny")}, **kw)
        return set(os.listdir(tmp_path))

    base = files()
    with_mu = files(mu_modal=0.3)
    assert len(with_mu - base) == 2  # new graphs, same O and clusters
    with_h = files(knn_k=4)
    assert len(with_h - with_mu) == 2
    assert len(files(fingerprint="other-split") - with_h) == 5


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    import recbole_mm.model.layers.mdsrec_item_graphs as graphs

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(graphs, "kmeans", broken)
    with pytest.raises(KeyboardInterrupt):
        build(dataset_kwargs={"cache_dir": str(tmp_path)})
    assert not any(name.startswith("mdsrec_kmeans") or name.startswith(".tmp") for name in os.listdir(tmp_path))


# ----------------------------------------------------------------------------- 12. RecBole end to end
def write_toy_dataset(folder, sequences, dim=6, seed=0):
    """RecBole atomic .inter (one user per sequence, timestamps = positions) + text/image .npy
    indexed by integer item token."""
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(folder)
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, seq in enumerate(sequences, start=1):
            for t, item in enumerate(seq):
                handle.write(f"{u}\t{item}\t{t}\n")
    n = max(max(s) for s in sequences) + 1
    rng = np.random.default_rng(seed)
    np.save(os.path.join(folder, "text_feat.npy"), rng.standard_normal((n, dim)).astype(np.float32))
    np.save(os.path.join(folder, "image_feat.npy"), rng.standard_normal((n, dim + 3)).astype(np.float32))


def recbole_config(data_path, name, **overrides):
    from recbole_mm.config import Config

    config_dict = dict(data_path=str(data_path), show_progress=False, state="ERROR", epochs=1,
                       train_batch_size=64, eval_batch_size=64, load_col={"inter": ["user_id", "item_id", "timestamp"]},
                       multimodal_features={"text": {"file": "text_feat.npy"}, "image": {"file": "image_feat.npy"}},
                       user_inter_num_interval="[0,inf)", item_inter_num_interval="[0,inf)", **SMALL)
    config_dict.update(overrides)
    return Config(model="MDSRec", dataset=name, config_dict=config_dict, parse_argv=False)


def train_split_model(tmp_path, name, sequences, **overrides):
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm.quick_start import create_dataset

    write_toy_dataset(os.path.join(tmp_path, name), sequences)
    config = recbole_config(tmp_path, name, **overrides)
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = MDSRec(config, train_data._dataset)
    token = {tok: i for i, tok in enumerate(dataset.field2id_token["item_id"])}
    return model, token


def test_cooccurrence_uses_training_split_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [[6, 7, 8, 9, 10, 11], [7, 8, 6, 10, 9, 11], [8, 6, 7, 9, 11, 10]]
    model, tok = train_split_model(tmp_path, "toya", [[1, 2, 3, 4, 5]] + base, cooc_norm="none")
    o = dense(model, "cooc")
    assert o[tok["1"], tok["2"]] == 1 and o[tok["2"], tok["3"]] == 1 and o[tok["1"], tok["3"]] == 0.5
    assert o[tok["4"]].sum() == 0 and o[tok["5"]].sum() == 0  # valid / test items have no edge
    assert o[:, tok["5"]].sum() == 0
    # swapping user 1's validation and test items leaves O unchanged
    swapped, tok2 = train_split_model(tmp_path, "toyb", [[1, 2, 3, 5, 4]] + base, cooc_norm="none")
    o2 = dense(swapped, "cooc")
    pairs = [(a, b) for a in tok if a != "[PAD]" for b in tok if b != "[PAD]"]
    assert all(o[tok[a], tok[b]] == o2[tok2[a], tok2[b]] for a, b in pairs)


def test_recbole_one_epoch_two_modalities(tmp_path, monkeypatch):
    from recbole_mm.quick_start import run_recbole_mm

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 30, size=rng.integers(5, 12)).tolist() for _ in range(40)]
    write_toy_dataset(os.path.join(tmp_path, "toyvt"), sequences)
    result = run_recbole_mm(model="MDSRec", dataset="toyvt", saved=False, config_dict=dict(
        data_path=str(tmp_path), show_progress=False, state="ERROR", epochs=1, train_batch_size=64,
        load_col={"inter": ["user_id", "item_id", "timestamp"]},
        multimodal_features={"text": {"file": "text_feat.npy"}, "image": {"file": "image_feat.npy"}}, **SMALL))
    assert all(np.isfinite(v) for v in result["test_result"].values())


@pytest.mark.skipif(not os.path.isdir(SCIENTIFIC), reason="../shared/datasets/scientific is absent")
def test_recbole_one_epoch_scientific_text_only(tmp_path, monkeypatch):
    from recbole_mm.quick_start import run_recbole_mm

    monkeypatch.chdir(tmp_path)
    result = run_recbole_mm(model="MDSRec", dataset="scientific", saved=False, config_dict=dict(
        data_path=os.path.dirname(SCIENTIFIC), show_progress=False, state="ERROR", epochs=1,
        train_batch_size=512, graph_cache_dir=str(tmp_path / "cache"), **SMALL))
    assert all(np.isfinite(v) for v in result["test_result"].values())
    assert result["test_result"]["ndcg@10"] > 0


def test_reordered_timestamps_rebuild_the_cached_cooccurrence_graph(tmp_path, monkeypatch):
    """Same training (user, item) pairs, other order: the cached O of the first order must not be reused."""
    from recbole.data import data_preparation

    from recbole_mm.quick_start import create_dataset

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    sequences = [rng.permutation(np.arange(1, 25))[:8].tolist() for _ in range(12)]
    write_toy_dataset(os.path.join(tmp_path, "toyr"), sequences)
    inter = os.path.join(tmp_path, "toyr", "toyr.inter")

    def cooc_and_reference():
        config = recbole_config(tmp_path, "toyr", cooc_norm="none", graph_cache_dir=str(tmp_path / "cache"))
        train, _, _ = data_preparation(config, create_dataset(config))
        model = MDSRec(config, train._dataset)
        expected = reference_cooccurrence(train._dataset.train_sequences(), model.n_items)
        return dense(model, "cooc").numpy(), expected, train._dataset.train_interaction_matrix()

    first, expected_first, pairs_first = cooc_and_reference()
    np.testing.assert_allclose(first, expected_first, rtol=1e-6)
    # same rows (so the same internal ids), training timestamps permuted within each user
    with open(inter, "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, seq in enumerate(sequences, start=1):
            times = list(rng.permutation(len(seq) - 2)) + [len(seq) - 2, len(seq) - 1]
            for item, t in zip(seq, times):
                handle.write(f"{u}\t{item}\t{t}\n")
    second, expected_second, pairs_second = cooc_and_reference()
    assert (pairs_first != pairs_second).nnz == 0  # the training pairs did not change
    assert not np.allclose(expected_first, expected_second)
    np.testing.assert_allclose(second, expected_second, rtol=1e-6)
