"""MuSTRec unit tests on a tiny fake dataset with the architecture.md contract (CPU, seconds).

End-to-end runs through RecBole live in tests/test_mustrec_e2e.py.
"""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml
from recbole.data.interaction import Interaction

from recbole_mm.data.dataset import TARGET_POSITION_FIELD
from recbole_mm.model.layers.frequency_attention import (
    FrequencyAttentionEncoder, FrequencyFilter, attention_mask, right_to_left_padding)
from recbole_mm.model.layers.lightgcn import lightgcn_propagate
from recbole_mm.model.mustrec import MuSTRec, resolve_switches, modality_weights

YAML = __file__.rsplit("/tests/", 1)[0] + "/properties/model/MuSTRec.yaml"
L = 6


def make_config(**overrides):
    config = yaml.safe_load(open(YAML))
    config.update({
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_", "device": torch.device("cpu"),
        "seed": 7, "MAX_ITEM_LIST_LENGTH": L, "embedding_size": 8, "inner_size": 16,
        "knn_k": 3, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "ui_keep_ratio": 0.5,
    })
    config.update(overrides)
    return config


class FakeDataset:
    """Training split with the dataset contract: features, masks, R, sequences, augmented rows."""

    def __init__(self, n_users=7, n_items=13, dims=None, seed=0, sequences=None, features=None):
        rng = np.random.default_rng(seed)
        dims = dims or {"image": 6, "text": 5}
        self.user_num, self.item_num = n_users, n_items
        self.modalities = list(dims)
        self.item_features, self.item_feature_mask = {}, {}
        for name, dim in dims.items():
            feats = torch.from_numpy(rng.normal(size=(n_items, dim)).astype(np.float32))
            if features and name in features:
                feats = features[name].clone()
            feats[0] = 0
            mask = feats.abs().sum(1) > 0
            self.item_features[name], self.item_feature_mask[name] = feats, mask
        if sequences is None:
            sequences = [np.array([], dtype=np.int64)] + [
                rng.choice(np.arange(1, n_items), size=int(rng.integers(3, 8)), replace=False)
                for _ in range(1, n_users)]
        self.sequences = [np.asarray(s, dtype=np.int64) for s in sequences]
        self.fingerprint, self.graph_cache_dir = None, None
        self.uid_field, self.iid_field = "user_id", "item_id"
        self.item_id_list_field, self.item_list_length_field = "item_id_list", "item_length"
        self.inter_feat = self._rows()

    def num(self, field):
        return self.item_num if field == "item_id" else self.user_num

    def _rows(self):
        users, seqs, lengths, targets, positions = [], [], [], [], []
        for user, seq in enumerate(self.sequences):
            for t in range(1, len(seq)):
                history = seq[max(0, t - L):t]
                users.append(user), lengths.append(len(history)), targets.append(seq[t]), positions.append(t)
                seqs.append(np.pad(history, (0, L - len(history))))
        return Interaction({"user_id": torch.tensor(users), "item_id_list": torch.tensor(np.array(seqs)),
                            "item_length": torch.tensor(lengths), "item_id": torch.tensor(targets),
                            TARGET_POSITION_FIELD: torch.tensor(positions)})

    def train_interaction_matrix(self):
        rows = [u for u, s in enumerate(self.sequences) for _ in s]
        cols = [i for s in self.sequences for i in s]
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                               shape=(self.user_num, self.item_num))
        matrix.data[:] = 1.0
        return matrix

    def train_sequences(self):
        return self.sequences


def build(dataset=None, seed=0, **overrides):
    torch.manual_seed(seed)
    return MuSTRec(make_config(**overrides), dataset or FakeDataset())


def dense(sparse):
    return sparse.to_dense().numpy()


# ------------------------------------------------------------------ 1. item-item graph
HAND_VECTORS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.2], [0.9, 0.5], [0.0, 1.0], [-1.0, 0.1]])


def reference_knn_graph(features, mask, k):
    """Slow reference: top-k cosine incl. self (ties: lower index), D^-1/2 S D^-1/2 on row sums."""
    n = features.shape[0]
    x = features.numpy().astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    cos = x @ x.T / np.maximum(norms * norms.T, 1e-12)
    adjacency = np.zeros((n, n))
    for i in range(n):
        if not mask[i]:
            adjacency[i, i] = 0.0 if i == 0 else 1.0
            continue
        candidates = sorted((j for j in range(n) if mask[j]), key=lambda j: (-cos[i, j], j))
        adjacency[i, candidates[:k]] = 1.0
    degree = adjacency.sum(1) + 1e-7
    return adjacency / np.sqrt(degree)[:, None] / np.sqrt(degree)[None, :]


def test_item_graph_matches_reference_and_is_directed():
    image = HAND_VECTORS.clone()
    text = torch.roll(HAND_VECTORS, 1, dims=1)
    text[3] = 0  # item 3 has no text feature
    ds = FakeDataset(n_items=6, dims={"image": 2, "text": 2}, features={"image": image, "text": text},
                     sequences=[[], [1, 2, 3], [4, 5, 1], [2, 4, 5, 3]])
    k = 2
    model = build(ds, knn_k=k)
    s = dense(model.item_item_graph)
    expected = 0.1 * reference_knn_graph(image, ds.item_feature_mask["image"], k) + \
        0.9 * reference_knn_graph(text, ds.item_feature_mask["text"], k)
    np.testing.assert_allclose(s, expected, atol=1e-5)
    assert np.abs(s[0]).sum() == 0 and np.abs(s[:, 0]).sum() == 0  # PAD has no edges
    np.testing.assert_allclose(s[1:].sum(1), 1.0, atol=1e-5)  # row-stochastic (1/k each)
    image_graph = dense(build(ds, knn_k=k, variant="V").item_item_graph)
    assert not np.allclose(image_graph, image_graph.T)  # directed, not symmetrised
    assert set(np.round(image_graph[image_graph > 0], 5)) == {round(1 / k, 5)}
    text_graph = dense(build(ds, knn_k=k, variant="T").item_item_graph)
    assert text_graph[3, 3] == pytest.approx(1.0) and np.count_nonzero(text_graph[3]) == 1
    assert np.count_nonzero(text_graph[:, 3]) == 1  # featureless item is nobody's neighbour
    assert np.isfinite(s).all()


def test_modality_weights_rules():
    assert modality_weights(["image", "text"], 0.1) == {"image": 0.1, "text": 0.9}
    assert modality_weights(["text"], 0.1) == {"text": 1.0}
    assert modality_weights(["text", "genre"], 0.1) == {"text": 0.5, "genre": 0.5}
    assert modality_weights(["text", "genre"], 0.1, {"text": 0.8, "genre": 0.2}) == {"text": 0.8, "genre": 0.2}
    with pytest.raises(ValueError, match="image"):
        build(FakeDataset(dims={"text": 4, "genre": 3}), variant="V")


# ------------------------------------------------------------------ 2-4. user-item graph, pruning, propagation
def test_ui_graph_is_normalised_training_bipartite_graph():
    ds = FakeDataset()
    model = build(ds)
    a = dense(model.ui_graph_full)
    r = ds.train_interaction_matrix().toarray()
    u = ds.user_num
    np.testing.assert_allclose(a, a.T, atol=1e-7)
    assert np.abs(a[:u, :u]).sum() == 0 and np.abs(a[u:, u:]).sum() == 0
    du, di = r.sum(1) + 1e-7, r.sum(0) + 1e-7
    np.testing.assert_allclose(a[:u, u:], r / np.sqrt(du[:, None] * di[None, :]), atol=1e-6)


def test_pruning_resampled_per_epoch_seeded_and_full_graph_at_eval():
    first, second = build(), build()
    first.on_epoch_start(0), second.on_epoch_start(0)
    g0 = dense(first._ui_graph_epoch)
    np.testing.assert_array_equal(g0, dense(second._ui_graph_epoch))  # seed reproduces
    first.on_epoch_start(1)
    assert not np.array_equal(g0, dense(first._ui_graph_epoch))  # epochs differ
    n_edges = first.ui_graph_full._nnz() // 2
    assert np.count_nonzero(g0) // 2 == math.floor(n_edges * 0.5)
    assert first._current_ui_graph() is first._ui_graph_epoch
    first.eval()
    assert first._current_ui_graph() is first.ui_graph_full


def test_propagation_two_users_three_items():
    ds = FakeDataset(n_users=3, n_items=4, dims={"image": 3, "text": 2}, sequences=[[], [1, 2, 3], [2, 3, 1]])
    model = build(ds, knn_k=2, leakage_check=False).eval()
    a = torch.tensor(dense(model.ui_graph_full))
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    layers = [ego, a @ ego, a @ a @ ego]
    mean = sum(layers) / 3
    item_item = model.item_item_graph.to_dense() @ model.item_embedding.weight.detach()
    h_user, h_item = model.graph_representations(model.ui_graph_full)
    expected_items = mean[3:] + item_item
    expected_items[0] = 0
    expected_users = mean[:3].clone()
    expected_users[0] = 0
    torch.testing.assert_close(h_item.detach(), expected_items)
    torch.testing.assert_close(h_user.detach(), expected_users)
    torch.testing.assert_close(lightgcn_propagate(a, ego, 2, "last"), layers[-1])


# ------------------------------------------------------------------ 5. frequency layer
def test_frequency_filter_bins_constant_nyquist_and_beta_one():
    torch.manual_seed(0)
    layer = FrequencyFilter(hidden_size=4, c=3, dropout=0.0, layer_norm_eps=1e-12)
    x = torch.randn(2, 8, 4)
    low, high = layer.split(x)
    spec_low, spec_x = torch.fft.rfft(low, dim=1, norm="ortho"), torch.fft.rfft(x, dim=1, norm="ortho")
    assert layer.kept_bins == 2
    torch.testing.assert_close(spec_low[:, :2], spec_x[:, :2], atol=1e-5, rtol=1e-5)
    assert spec_low[:, 2:].abs().max() < 1e-5
    torch.testing.assert_close(low + high, x)
    _, high_const = layer.split(torch.ones(1, 8, 4) * 3.0)
    assert high_const.abs().max() < 1e-5  # constant sequence: no high frequency
    nyquist = torch.tensor([(-1.0) ** t for t in range(8)]).view(1, 8, 1).repeat(1, 1, 4)
    low_nyq, _ = layer.split(nyquist)
    assert low_nyq.abs().max() < 1e-5
    with torch.no_grad():
        layer.sqrt_beta.fill_(1.0)  # beta = 1: LFC + HFC = X, so output = LN(2X)
    torch.testing.assert_close(layer(x), torch.nn.functional.layer_norm(2 * x, (4,), eps=1e-12),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha,silent", [(1.0, "attention"), (0.0, "frequency")])
def test_alpha_extremes_cut_gradients(alpha, silent):
    torch.manual_seed(0)
    encoder = FrequencyAttentionEncoder(n_layers=1, hidden_size=8, n_heads=2, inner_size=16,
                                        hidden_dropout=0.0, attn_dropout=0.0, alpha=alpha)
    x = torch.randn(3, 5, 8)
    encoder(x, attention_mask(torch.ones(3, 5, dtype=torch.bool))).sum().backward()
    block = encoder.blocks[0]
    dead = block.attention.query.weight.grad if silent == "attention" else block.frequency.sqrt_beta.grad
    live = block.frequency.sqrt_beta.grad if silent == "attention" else block.attention.value.weight.grad
    assert dead is None or dead.abs().max() == 0
    assert live.abs().max() > 0


def test_right_to_left_padding_and_causal_mask():
    seq = torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 9], [8, 0, 0, 0, 0]])
    left = right_to_left_padding(seq, torch.tensor([3, 5, 1]))
    assert left.tolist() == [[0, 0, 5, 6, 7], [1, 2, 3, 4, 9], [0, 0, 0, 0, 8]]
    mask = attention_mask(left > 0)
    assert mask.shape == (3, 1, 5, 5)
    assert mask[0, 0, 4].tolist() == [-10000.0, -10000.0, 0.0, 0.0, 0.0]
    assert mask[0, 0, 2, 3] == -10000.0  # no attention to the future
    torch.manual_seed(0)
    encoder = FrequencyAttentionEncoder(n_layers=1, hidden_size=8, n_heads=2, inner_size=16,
                                        hidden_dropout=0.0, attn_dropout=0.0, alpha=0.0)
    x = torch.randn(1, 5, 8)
    full = attention_mask(torch.ones(1, 5, dtype=torch.bool))
    changed = x.clone()
    changed[0, 4] += 1.0
    torch.testing.assert_close(encoder(x, full)[0, :4], encoder(changed, full)[0, :4])  # causal
    all_masked = attention_mask(torch.zeros(1, 5, dtype=torch.bool))
    assert torch.isfinite(encoder(x, all_masked)).all()  # no valid key: uniform, not NaN


# ------------------------------------------------------------------ 6. head
def test_head_parameter_count_matches_official():
    model = build(embedding_size=64, inner_size=256, MAX_ITEM_LIST_LENGTH=50)
    head = [model.position_embedding, model.input_layer_norm, model.encoder]
    assert sum(p.numel() for m in head for p in m.parameters()) == 103_680


def all_items_interaction(batch, item):
    fields = {k: batch[k] for k in ("user_id", "item_id_list", "item_length")}
    fields["item_id"] = torch.full_like(batch["item_id"], item)
    return Interaction(fields)


@pytest.mark.parametrize("variant", ["full", "U", "B"])
def test_full_sort_equals_predict_and_pad_is_minus_inf(variant):
    ds = FakeDataset()
    model = build(ds, variant=variant).eval()
    batch = ds.inter_feat
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        columns = torch.stack([model.predict(all_items_interaction(batch, j)) for j in range(ds.item_num)], 1)
    assert torch.isneginf(scores[:, 0]).all() and torch.isneginf(columns[:, 0]).all()
    torch.testing.assert_close(scores[:, 1:], columns[:, 1:], atol=1e-5, rtol=1e-5)


def test_eval_cache_dropped_on_train():
    ds = FakeDataset()
    model = build(ds).eval()
    before = model.full_sort_predict(ds.inter_feat).detach()
    assert model._eval_cache is not None
    model.train()
    assert model._eval_cache is None
    with torch.no_grad():
        model.item_embedding.weight[1:] += 0.5
    model.eval()
    assert not torch.allclose(before, model.full_sort_predict(ds.inter_feat).detach())


# ------------------------------------------------------------------ 7. losses
def test_loss_equals_hand_computation():
    ds = FakeDataset()
    model = build(ds, omega=0.3, w_bpr=0.7, reg_weight=0.05).eval()  # eval: full graph, no dropout
    batch = ds.inter_feat
    negatives = torch.tensor([(int(i) % (ds.item_num - 1)) + 1 for i in batch["item_id"] * 3 + 1])
    model.sample_negatives = lambda users, positions: negatives
    model.stage = "joint"
    loss = model.calculate_loss(batch)
    h_user, h_item = model.graph_representations(model.ui_graph_full)
    u, g = batch["user_id"], batch["item_id"]
    expected_bpr, expected_ce = 0.0, 0.0
    x = model.forward(batch["item_id_list"], batch["item_length"], h_item)
    for b in range(len(u)):
        hu = h_user[u[b]]
        expected_bpr += -math.log(torch.sigmoid(hu @ h_item[g[b]] - hu @ h_item[negatives[b]]).item())
        for name, proj in model.modal_projections.items():
            feats = model.feature_tables[name].weight
            diff = hu @ proj(feats[g[b]]) - hu @ proj(feats[negatives[b]])
            expected_bpr += 0.05 * -math.log(torch.sigmoid(diff).item())
        logits = (h_item[1:] @ x[b]).double()
        expected_ce += -(logits[g[b] - 1] - torch.logsumexp(logits, 0)).item()
    expected = 0.7 * expected_bpr / len(u) + 0.3 * expected_ce / len(u)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def grads_after_loss(model, batch):
    model.zero_grad()
    model.calculate_loss(batch).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_lambda_zero_and_omega_zero_cut_gradients():
    ds = FakeDataset()
    grads = grads_after_loss(build(ds, reg_weight=0.0), ds.inter_feat)
    assert not any(n.startswith("modal_projections") for n in grads)  # lambda = 0: no W_m at all
    grads = grads_after_loss(build(ds), ds.inter_feat)
    assert grads["modal_projections.image.weight"].abs().max() > 0
    grads = grads_after_loss(build(ds, omega=0.0), ds.inter_feat)
    assert all(grads[n] is None for n in grads if n.startswith(("encoder", "position_embedding")))


def test_negatives_avoid_pad_and_history_and_are_uniform():
    ds = FakeDataset(n_items=30)
    model = build(ds)
    r = ds.train_interaction_matrix().toarray()
    users = torch.arange(1, ds.user_num).repeat_interleave(3000)
    positions = torch.arange(3000).repeat(ds.user_num - 1)
    negatives = model.sample_negatives(users, positions)
    assert (negatives > 0).all()
    assert r[users.numpy(), negatives.numpy()].sum() == 0
    for user in range(1, ds.user_num):  # uniform over the user's allowed items (3,000 draws each)
        allowed = [i for i in range(1, ds.item_num) if not r[user, i]]
        counts = np.bincount(negatives[users == user].numpy(), minlength=ds.item_num)[allowed]
        expected = 3000 / len(allowed)
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


def test_negatives_depend_on_the_row_not_on_its_batch_or_order():
    """The DDP prerequisite: a row draws the same negative in any batch order or split."""
    ds = FakeDataset(n_items=30)
    model = build(ds)
    batch = ds.inter_feat
    users, positions = batch["user_id"], batch[TARGET_POSITION_FIELD]
    model.on_epoch_start(0)
    negatives = model.sample_negatives(users, positions)
    order = torch.randperm(len(users), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.sample_negatives(users[order], positions[order]), negatives[order])
    half = len(users) // 2  # two "ranks", each with half of the rows
    split = torch.cat([model.sample_negatives(users[:half], positions[:half]),
                       model.sample_negatives(users[half:], positions[half:])])
    torch.testing.assert_close(split, negatives)
    model.on_epoch_start(1)
    assert (model.sample_negatives(users, positions) != negatives).float().mean() > 0.5  # a new draw per epoch
    model.on_epoch_start(0)
    torch.testing.assert_close(model.sample_negatives(users, positions), negatives)
    other_seed = MuSTRec(make_config(seed=8), ds)  # the config seed keys the draws too
    assert (other_seed.sample_negatives(users, positions) != negatives).float().mean() > 0.5


# ------------------------------------------------------------------ 8. modes and variants
def test_variant_expansion_and_conflicts():
    assert resolve_switches(make_config(variant="B"))["use_ui_graph"] is False
    both = resolve_switches(make_config(variant="S+U"))
    assert both["pretrain_graph"] and both["user_token"]
    with pytest.raises(ValueError, match="reg_weight"):
        resolve_switches(make_config(variant="I", reg_weight=0.5))
    with pytest.raises(ValueError, match="unknown variant"):
        resolve_switches(make_config(variant="Q"))


def test_graph_mode_ce_reaches_graph_side_id_mode_does_not():
    ds = FakeDataset()
    grads = grads_after_loss(build(ds, w_bpr=0.0), ds.inter_feat)
    assert grads["user_embedding.weight"].abs().max() > 0  # through A into h_i
    assert grads["item_embedding.weight"].abs().max() > 0
    grads = grads_after_loss(build(ds, w_bpr=0.0, seq_item_source="id"), ds.inter_feat)
    assert grads["user_embedding.weight"] is None
    assert grads["item_embedding.weight"].abs().max() > 0  # raw ID table used directly


def eval_scores(model, ds):
    model.eval()
    with torch.no_grad():
        return model.full_sort_predict(ds.inter_feat)


def copy_shared_weights(source, target):
    """Give ``target`` every weight of ``source`` it has (same name and shape); MuSTRec-U's
    position table has one more row (slot 0, the user token's earliest slot): the item slots
    get the source's rows."""
    state, own = source.state_dict(), target.state_dict()
    for name, value in own.items():
        if name in state and state[name].shape == value.shape:
            own[name] = state[name].clone()
    extra = own["position_embedding.weight"].shape[0] - state["position_embedding.weight"].shape[0]
    if extra:
        own["position_embedding.weight"][extra:] = state["position_embedding.weight"]
    target.load_state_dict(own)
    return target


@pytest.mark.parametrize("variant", ["B", "M", "I", "V", "T", "U"])
def test_each_variant_changes_outputs(variant):
    """With every weight they share set equal, the variant's switch alone changes the scores."""
    ds = FakeDataset()
    full = build(ds)
    reference = eval_scores(full, ds)
    torch.testing.assert_close(eval_scores(copy_shared_weights(full, build(ds, seed=5)), ds), reference)  # control
    other = copy_shared_weights(full, build(ds, seed=5, variant=variant))
    assert not torch.allclose(eval_scores(other, ds)[:, 1:], reference[:, 1:], atol=1e-4)


def test_variant_I_ignores_features_and_M_ignores_user_item_graph():
    ds = FakeDataset()
    other = FakeDataset()
    for name in other.item_features:
        other.item_features[name] = other.item_features[name] * 3 + 1
        other.item_features[name][0] = 0
    assert len(build(ds, variant="I").feature_tables) == 0
    torch.testing.assert_close(eval_scores(build(ds, variant="I"), ds), eval_scores(build(other, variant="I"), ds))
    rewired = FakeDataset()
    rewired.train_interaction_matrix = lambda: sp.csr_matrix(np.eye(ds.user_num, ds.item_num, k=1, dtype=np.float32))
    torch.testing.assert_close(eval_scores(build(ds, variant="M"), ds),
                               eval_scores(build(rewired, variant="M", leakage_check=False), ds))


def test_user_token_is_h_u_and_keeps_all_items():
    ds = FakeDataset()
    model = build(ds, variant="U").eval()
    seen = {}
    model.input_layer_norm.register_forward_hook(lambda m, args, out: seen.update(x=seen.get("x", args[0])))
    item_seq = torch.tensor([[3, 4, 5, 6, 7, 8], [2, 9, 0, 0, 0, 0]])
    users = torch.tensor([1, 2])
    h_user, h_item = model.graph_representations(model.ui_graph_full)
    out = model.forward(item_seq, torch.tensor([6, 2]), h_item, h_user, users)
    x = seen["x"] - model.position_embedding.weight.unsqueeze(0)
    torch.testing.assert_close(x[0, 0], h_user[1])  # full sequence: token in slot 0, all 6 items kept
    torch.testing.assert_close(x[0, 1:], h_item[item_seq[0]])
    torch.testing.assert_close(x[1, L - 2], h_user[2])  # token right before the first item
    changed = item_seq.clone()
    changed[0, 0] = 10  # the oldest item still matters
    assert not torch.allclose(out[0], model.forward(changed, torch.tensor([6, 2]), h_item, h_user, users)[0])


def test_pretrain_stage_two_freezes_graph_side():
    ds = FakeDataset()
    model = build(ds, variant="S")
    model.set_stage("graph")
    grads = grads_after_loss(model, ds.inter_feat)
    assert all(grads[n] is None for n in grads if n.startswith("encoder"))  # stage 1: BPR only
    model.zero_grad(set_to_none=True)
    model.set_stage("head")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert "user_embedding.weight" in frozen and "item_embedding.weight" in frozen
    optimizer = torch.optim.Adam(model.optimizer_param_groups(), lr=0.1)
    model.train()
    loss = model.calculate_loss(ds.inter_feat)
    loss.backward()
    assert model.user_embedding.weight.grad is None and model.item_embedding.weight.grad is None
    optimizer.step()
    for name, param in model.named_parameters():
        if name in frozen:
            torch.testing.assert_close(param, frozen[name])
    trainable = build(ds, variant="S", freeze_pretrained=False)
    trainable.set_stage("head")
    assert isinstance(trainable.frozen_item, torch.nn.Parameter) and trainable.frozen_item.requires_grad


@pytest.mark.parametrize("overrides", [{"freeze_pretrained": False}, {"seq_item_source": "id"}])
def test_pretrain_stage_two_tables_are_saved_and_reloaded(overrides):
    """MuSTRec-S: a checkpoint of stage 2 keeps its h tables; a fresh model loading it scores the same."""
    ds = FakeDataset()
    model = build(ds, variant="S", **overrides)
    model.set_stage("graph")
    optimizer = torch.optim.Adam(model.optimizer_param_groups(), lr=0.05)
    model.calculate_loss(ds.inter_feat).backward()
    optimizer.step()
    model.set_stage("head")
    optimizer = torch.optim.Adam(model.optimizer_param_groups(), lr=0.05)
    model.train()
    model.calculate_loss(ds.inter_feat).backward()
    optimizer.step()  # trains the head (and the table copies when they are trainable)
    scores = eval_scores(model, ds)
    state = model.state_dict()
    assert {"frozen_user", "frozen_item"} <= set(state)
    reloaded = build(ds, variant="S", **overrides)
    reloaded.load_state_dict(state)
    assert reloaded.stage == "head"
    torch.testing.assert_close(eval_scores(reloaded, ds), scores)
    stale = build(ds, variant="S", **overrides)  # the graph part alone does not give these scores
    stale.load_state_dict({k: v for k, v in state.items() if not k.startswith("frozen_")}, strict=False)
    assert not torch.allclose(eval_scores(stale, ds)[:, 1:], scores[:, 1:], atol=1e-4)


# ------------------------------------------------------------------ 9-10. leakage, determinism
def test_injected_eval_edge_raises():
    ds = FakeDataset()
    leaky = ds.train_interaction_matrix().tolil()
    user = 1
    leaky[user, ds.sequences and [i for i in range(1, ds.item_num) if i not in ds.sequences[user]][0]] = 1.0
    ds.train_interaction_matrix = lambda: leaky.tocsr()
    with pytest.raises(ValueError, match="leakage_check"):
        build(ds)


def test_same_seed_same_training_step():
    losses = []
    for _ in range(2):
        ds = FakeDataset()
        model = build(ds, seed=3, hidden_dropout_prob=0.5, attn_dropout_prob=0.5)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        run = []
        for epoch in range(2):
            model.on_epoch_start(epoch)
            optimizer.zero_grad()
            loss = model.calculate_loss(ds.inter_feat)
            loss.backward()
            optimizer.step()
            run.append(loss.item())
        losses.append(run + eval_scores(model, ds).flatten()[:20].tolist())
    assert losses[0] == losses[1]


def test_keep_ratio_one_and_frozen_raw_features():
    ds = FakeDataset()
    model = build(ds, ui_keep_ratio=1.0, train_raw_features=False)
    assert model.pruner is None and model._current_ui_graph() is model.ui_graph_full
    assert all(not p.requires_grad for p in model.feature_tables.parameters())
    assert all(p.requires_grad for p in build(ds).feature_tables.parameters())
