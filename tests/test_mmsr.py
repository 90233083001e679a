"""Tests of MMSR (recbole_mm/model/mmsr.py) and its batched MSGraph builder.

References written here, slow and literal: a per-sample graph builder following the paper's
§4.1 (docs/models/MMSR.md) node by node, and per-node loops for the two attention aggregations.
"""
import os
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from recbole_mm.model.layers.han_gnn import masked_softmax
from recbole_mm.model.layers.msgraph import build_msgraph
from recbole_mm.model.mmsr import MMSR, MMSRConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCIENTIFIC = os.path.join(ROOT, "..", "shared", "datasets", "scientific")
N_ITEMS, L = 40, 8


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids thread-pool overhead on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeConfig(dict):
    def __getitem__(self, key):
        return self.get(key)


def make_config(**overrides):
    with open(os.path.join(ROOT, "properties", "model", "MMSR.yaml")) as handle:
        config = yaml.safe_load(handle)
    config.update(USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", LIST_SUFFIX="_list",
                  ITEM_LIST_LENGTH_FIELD="item_length", NEG_PREFIX="neg_", device="cpu", seed=3,
                  embedding_size=16, code_num=5, code_k=2, code_reduce="pca", MAX_ITEM_LIST_LENGTH=L,
                  hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    config.update(overrides)
    return FakeConfig(config)


def make_dataset(modalities=("image", "text"), seed=0, train_items=None):
    gen = torch.Generator().manual_seed(seed)
    dims = {"image": 12, "text": 10, "genre": 6}
    features, masks = {}, {}
    for name in modalities:
        features[name] = torch.randn(N_ITEMS, dims[name], generator=gen)
        masks[name] = torch.ones(N_ITEMS, dtype=torch.bool)
        masks[name][0] = False
        features[name][0] = 0
    if "image" in masks:  # a few items without an image
        masks["image"][[3, 7]] = False
        features["image"][[3, 7]] = 0
    used = np.ones(N_ITEMS) if train_items is None else np.isin(np.arange(N_ITEMS), train_items).astype(float)
    return types.SimpleNamespace(
        modalities=list(modalities), item_features=features, item_feature_mask=masks,
        num=lambda field: N_ITEMS, train_interaction_matrix=lambda: sp.csr_matrix(used[None, :]))


def random_batch(batch=12, seed=1, max_item=N_ITEMS):
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, 9, (batch, L), generator=gen)  # few distinct items: many repeats
    seq = torch.where(torch.rand(batch, L, generator=gen) < 0.5, seq,
                      torch.randint(1, max_item, (batch, L), generator=gen))
    lengths = torch.randint(1, L + 1, (batch,), generator=gen)
    lengths[0], lengths[1] = 1, L
    seq[torch.arange(L)[None, :] >= lengths[:, None]] = 0
    return seq, lengths


def make_model(dataset=None, **overrides):
    torch.manual_seed(0)
    model = MMSR(make_config(**overrides), dataset or make_dataset())
    return model.eval()


def scores(model, seq, lengths):
    with torch.no_grad():
        return model.full_sort_predict({"item_id_list": seq, "item_length": lengths})


# ----------------------------------------------------------------------------- reference graph
def reference_graph(items, code_lists):
    """Literal per-sample MSGraph: nodes are (type, id) keys; returns labels, positions, readout."""
    nodes, positions = set(), {}
    for t, item in enumerate(items):
        keys = [(0, item)] + [(m + 1, c) for m, codes in enumerate(code_lists) for c in codes[t]]
        for key in keys:
            nodes.add(key)
            positions.setdefault(key, set()).add(t)
    directed = set()
    for t in range(len(items) - 1):
        if items[t] == items[t + 1]:
            continue
        directed.add(((0, items[t]), (0, items[t + 1])))
        for m, codes in enumerate(code_lists):
            for u in codes[t]:
                for w in codes[t + 1]:
                    if u != w:
                        directed.add(((m + 1, u), (m + 1, w)))
    labels = {}
    for u, w in directed:
        both = (w, u) in directed
        labels[(u, w)] = 4 if both else 2
        labels[(w, u)] = 4 if both else 3
    for t, item in enumerate(items):
        keys = [(0, item)] + [(m + 1, c) for m, codes in enumerate(code_lists) for c in codes[t]]
        for a in keys:
            for b in keys:
                if a[0] != b[0]:
                    labels[(a, b)] = 5
    for key in nodes:
        labels[(key, key)] = 1
    return labels, positions, (0, items[-1])


def batched_as_keys(graph, b):
    node_type = graph.node_type.tolist()
    keys = {i: (node_type[i], int(graph.node_ids[b, i])) for i in range(len(node_type)) if graph.active[b, i]}
    rel = graph.relation[b]
    labels = {(keys[i], keys[j]): int(rel[i, j]) for i in keys for j in keys if rel[i, j] != 0}
    assert int((rel != 0).sum()) == len(labels), "edge touching an inactive slot"
    positions = {keys[i]: set(torch.nonzero(graph.positions[b, i]).flatten().tolist()) for i in keys}
    return labels, positions, keys[int(graph.readout[b])]


def code_table(rows):
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------------------- graph tests
@pytest.mark.parametrize("layout", ["compact", "identity"])
def test_hand_made_graph(layout):
    # items A=1, B=2, C=3; k=1: img(A)=0, img(B)=1, img(C)=0; txt(A)=0, txt(B)=0, txt(C)=1
    img, txt = code_table([[-1], [0], [1], [0]]), code_table([[-1], [0], [0], [1]])
    graph = build_msgraph(torch.tensor([[1, 2, 1, 3, 0]]), torch.tensor([4]), [img, txt], [2, 2], layout)
    labels, positions, readout = batched_as_keys(graph, 0)
    A, B, C, i0, i1, t0, t1 = (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0), (2, 1)
    assert int(graph.active.sum()) == 7
    assert labels[(A, B)] == labels[(B, A)] == 4
    assert labels[(A, C)] == 2 and labels[(C, A)] == 3
    assert labels[(i0, i1)] == labels[(i1, i0)] == 4
    assert labels[(t0, t1)] == 2 and labels[(t1, t0)] == 3
    hetero = {frozenset(pair) for pair, label in labels.items() if label == 5}
    assert hetero == {frozenset(p) for p in [(A, i0), (A, t0), (i0, t0), (B, i1), (B, t0), (i1, t0),
                                             (C, i0), (C, t1), (i0, t1)]}
    assert all(labels[(n, n)] == 1 for n in [A, B, C, i0, i1, t0, t1])
    assert positions == {A: {0, 2}, B: {1}, C: {3}, i0: {0, 2, 3}, i1: {1}, t0: {0, 1, 2}, t1: {3}}
    assert readout == C


def test_repeated_item_step_is_skipped():
    # [A, A, B], k=2: img(A)={0,1}, img(B)={2,0}; the A->A step adds no code edge i0->i1
    img = code_table([[-1, -1], [0, 1], [2, 0]])
    graph = build_msgraph(torch.tensor([[1, 1, 2]]), torch.tensor([3]), [img], [3])
    labels, _, _ = batched_as_keys(graph, 0)
    i0, i1 = (1, 0), (1, 1)
    assert labels[(i1, i0)] == 2 and labels[(i0, i1)] == 3


def item_modality_lists(items, present):
    """code_num 0, literally: at each position, the item's own node per modality it has."""
    return [[[item] if has[item] else [] for item in items] for has in present]


@pytest.mark.parametrize("layout", ["compact", "identity"])
def test_item_modality_graph_without_codes(layout):
    # code_num 0: A=1, B=3 (no image in make_dataset), C=2; sequence [A, B, A, C]
    model = make_model(code_num=0, code_k=4, graph_layout=layout)
    graph = model.build_graph(torch.tensor([[1, 3, 1, 2, 0]]), torch.tensor([4]))
    labels, positions, readout = batched_as_keys(graph, 0)
    A, B, C, iA, iC, tA, tB, tC = (0, 1), (0, 3), (0, 2), (1, 1), (1, 2), (2, 1), (2, 3), (2, 2)
    assert set(positions) == {A, B, C, iA, iC, tA, tB, tC}  # B has no image node
    assert labels[(A, B)] == labels[(B, A)] == labels[(tA, tB)] == labels[(tB, tA)] == 4
    assert labels[(iA, iC)] == labels[(tA, tC)] == 2 and labels[(iC, iA)] == labels[(tC, tA)] == 3
    hetero = {frozenset(pair) for pair, label in labels.items() if label == 5}
    assert hetero == {frozenset(p) for p in [(A, iA), (A, tA), (iA, tA), (B, tB), (C, iC), (C, tC), (iC, tC)]}
    assert positions[iA] == positions[tA] == {0, 2} and readout == C
    assert (labels, positions, readout) == reference_graph([1, 3, 1, 2], item_modality_lists(
        [1, 3, 1, 2], [make_dataset().item_feature_mask[m] for m in ("image", "text")]))


@pytest.mark.parametrize("layout", ["compact", "identity"])
def test_item_modality_builder_equals_reference(layout):
    dataset = make_dataset(train_items=list(range(1, 30)))
    model = make_model(dataset, code_num=0, graph_layout=layout, missing_ratio={"text": 0.3})
    present = [dataset.item_feature_mask["image"],
               dataset.item_feature_mask["text"] & ~model.hidden_items(1, dataset.item_feature_mask["text"])]
    seq, lengths = random_batch(batch=16, seed=4)
    graph = model.build_graph(seq, lengths)
    for b in range(seq.shape[0]):
        items = seq[b, :lengths[b]].tolist()
        assert batched_as_keys(graph, b) == reference_graph(items, item_modality_lists(items, present))
    # node rows: a learned Linear of the AE feature, scaled into +-1/sqrt(d) on the fit (training) items
    table = model.code_embeddings[1]
    assert (table.ae_features[graph.node_ids[graph.active & (graph.node_type == 2)]].abs().sum(1) > 0).all()
    fit = present[1] & (torch.arange(N_ITEMS) < 30)
    assert torch.isclose(table.ae_features[fit].abs().max(), torch.tensor(1 / 4))  # d = 16
    random_init = make_model(dataset, code_num=0, missing_ratio={"text": 0.3}, code_init="random")
    assert torch.equal(random_init.code_embeddings[1].ae_features, table.ae_features)  # an input, not an init
    changed = make_dataset(train_items=list(range(1, 30)))
    changed.item_features["text"][35] += 10.0  # not a training item
    other = make_model(changed, code_num=0, graph_layout=layout, missing_ratio={"text": 0.3})
    keep = torch.arange(N_ITEMS) != 35
    assert torch.equal(other.code_embeddings[1].ae_features[keep], table.ae_features[keep])


@pytest.mark.parametrize("layout", ["compact", "identity"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_batched_builder_equals_reference(layout, k):
    gen = torch.Generator().manual_seed(k)
    n_codes = [4, 6, 3]
    tables = []
    for c in n_codes:
        table = torch.stack([torch.randperm(c, generator=gen)[:k] for _ in range(N_ITEMS)])
        table[torch.rand(N_ITEMS, generator=gen) < 0.2] = -1  # items without this modality
        table[0] = -1
        tables.append(table)
    seq, lengths = random_batch(batch=16, seed=k)
    keep = [None, torch.rand(seq.shape, generator=gen) > 0.3, None]  # per-position dropping
    graph = build_msgraph(seq, lengths, tables, n_codes, layout, keep)
    for b in range(seq.shape[0]):
        items = seq[b, :lengths[b]].tolist()
        code_lists = []
        for m, table in enumerate(tables):
            per_t = []
            for t, item in enumerate(items):
                dropped = keep[m] is not None and not keep[m][b, t]
                per_t.append([] if dropped else [c for c in table[item].tolist() if c >= 0])
            code_lists.append(per_t)
        assert batched_as_keys(graph, b) == reference_graph(items, code_lists)


@pytest.mark.parametrize("code_num", [5, 0])
def test_layouts_give_same_scores(code_num):
    seq, lengths = random_batch()
    compact = make_model(graph_layout="compact", code_num=code_num)
    identity = make_model(graph_layout="identity", code_num=code_num)
    identity.load_state_dict(compact.state_dict())
    assert torch.allclose(scores(compact, seq, lengths), scores(identity, seq, lengths), atol=1e-6)


@pytest.mark.parametrize("switch", [{}, {"han_mode": "sync"}, {"han_mode": "hohe", "non_invasive": False},
                                    {"han_mode": "heho"}, {"han_mode": "ho"}, {"han_mode": "he"},
                                    {"global_attn": True, "n_layers": 2}, {"use_pos_emb": False},
                                    {"code_num": 0}],
                         ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "default")
def test_sparse_backend_equals_dense(switch):
    seq, lengths = random_batch()
    sparse = make_model(graph_backend="sparse", **switch)
    dense = make_model(graph_backend="dense", **switch)
    dense.load_state_dict(sparse.state_dict())
    with torch.no_grad():
        for parameter in list(sparse.parameters()) + list(dense.parameters()):
            parameter.mul_(2.0)
    assert sparse.sparse and not dense.sparse
    assert torch.allclose(scores(sparse, seq, lengths), scores(dense, seq, lengths), atol=1e-4)
    sparse.train(), dense.train()
    batch = {"item_id_list": seq, "item_length": lengths, "item_id": seq[:, 0]}
    for model in (sparse, dense):
        model.calculate_loss(batch).backward()
    for (name, a), (_, b) in zip(sparse.named_parameters(), dense.named_parameters()):
        if a.grad is not None or b.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-4), name


# ----------------------------------------------------------------------------- layer tests
def literal_aggregations(layer, h, graph, b):
    """Per-node loops of Ho(H,H) and He(H,H) (Eq. 12-14) for sample b."""
    types_ = graph.node_type.tolist()
    rel = graph.relation[b]
    V = [layer.value[t](h[b, i]) for i, t in enumerate(types_)]
    Q = [layer.query[t](h[b, i]) for i, t in enumerate(types_)]
    K = [layer.key[t](h[b, i]) for i, t in enumerate(types_)]
    ho, he = torch.zeros_like(h[b]), torch.zeros_like(h[b])
    for i in range(len(types_)):
        if not graph.active[b, i]:
            continue
        nb = [j for j in range(len(types_)) if 1 <= rel[i, j] <= 4]
        s = torch.stack([torch.nn.functional.leaky_relu(
            (layer.relation_vectors[int(rel[i, j]) - 1] * V[i] * V[j]).sum(), 0.1) for j in nb])
        ho[i] = sum(w * V[j] for w, j in zip(torch.softmax(s, 0), nb))
        nb = [j for j in range(len(types_)) if rel[i, j] in (1, 5)]
        s = torch.stack([(Q[i] * K[j]).sum() for j in nb])
        he[i] = sum(w * V[j] for w, j in zip(torch.softmax(s, 0), nb))
    return ho, he


def layer_inputs(model, seq, lengths):
    graph = model.build_graph(seq, lengths)
    return model.node_input(graph), graph


def test_layer_equals_per_node_loops_and_is_permutation_invariant():
    model = make_model()
    seq, lengths = random_batch(batch=4)
    h, graph = layer_inputs(model, seq, lengths)
    layer = model.layers[0]
    with torch.no_grad():
        ho, he = layer.homo(h, h, graph), layer.hetero(h, h, graph)
        for b in range(seq.shape[0]):
            ref_ho, ref_he = literal_aggregations(layer, h, graph, b)
            active = graph.active[b]
            assert torch.allclose(ho[b][active], ref_ho[active], atol=1e-5)
            assert torch.allclose(he[b][active], ref_he[active], atol=1e-5)
        # permuting the items of the identity layout's code slots: same readout
        base = scores(model, seq, lengths)
        model.graph_layout = "identity"
        assert torch.allclose(base, scores(model, seq, lengths), atol=1e-6)


def test_query_key_value_are_distinct():
    model = make_model(n_layers=2).train()
    seq, lengths = random_batch()
    loss = model.calculate_loss({"item_id_list": seq, "item_length": lengths, "item_id": seq[:, 0]})
    loss.backward()
    layer = model.layers[0]
    for t in range(3):
        for proj in (layer.query, layer.key, layer.value):
            assert proj[t].weight.grad.abs().sum() > 0
    assert not torch.equal(layer.query[0].weight, layer.key[0].weight)
    model.eval()
    h, graph = layer_inputs(model, seq, lengths)
    with torch.no_grad():
        before = scores(model, seq, lengths)
        layer.key[1].weight.add_(0.5)
        assert not torch.allclose(before, scores(model, seq, lengths))
        q = torch.cat([layer.query[t](h[:, s:e]) for t, (s, e) in enumerate(graph.type_slices)], 1)
        k = torch.cat([layer.key[t](h[:, s:e]) for t, (s, e) in enumerate(graph.type_slices)], 1)
        raw = q @ k.transpose(1, 2)
        assert not torch.allclose(raw, raw.transpose(1, 2))  # asymmetric hetero scores


def test_update_orders_and_gate():
    model = make_model()
    seq, lengths = random_batch()
    h, graph = layer_inputs(model, seq, lengths)
    layer = model.layers[0]
    with torch.no_grad():
        a, e = layer.homo(h, h, graph), layer.hetero(h, h, graph)
        hohe, heho = layer.hetero(a, h, graph), layer.homo(e, h, graph)
        active = graph.active.unsqueeze(-1)
        assert not torch.allclose(hohe * active, heho * active, atol=1e-4)
        assert not torch.allclose(hohe * active, e * active, atol=1e-4)  # NI(hohe) is not he-only (bug B2)
        beta = layer.gate_weights(hohe, heho)
        assert torch.allclose(beta.sum(-1), torch.ones_like(beta[..., 0]))
        assert torch.allclose(layer(h, graph), beta[..., :1] * hohe + beta[..., 1:] * heho, atol=1e-6)
        layer.gate[2].weight.zero_()
        layer.gate[2].bias.copy_(torch.tensor([50.0, -50.0]))  # force beta = (1, 0)
        assert torch.allclose(layer(h, graph), hohe, atol=1e-5)
        layer.mode = "hohe"
        assert torch.allclose(layer(h, graph), hohe, atol=1e-6)
        layer.mode = "heho"
        assert torch.allclose(layer(h, graph), heho, atol=1e-6)
        layer.non_invasive = False
        assert torch.allclose(layer(h, graph), layer.homo(e, e, graph), atol=1e-6)


def test_masked_softmax_rows_without_neighbours_are_zero():
    out = masked_softmax(torch.randn(2, 3), torch.tensor([[True, False, True], [False, False, False]]))
    assert torch.allclose(out[0].sum(), torch.tensor(1.0)) and out[0, 1] == 0 and torch.all(out[1] == 0)


SWITCHES = [
    {"han_mode": "sync"}, {"han_mode": "hohe"}, {"han_mode": "heho"}, {"han_mode": "ho"}, {"han_mode": "he"},
    {"non_invasive": False}, {"gate": "shared"}, {"use_pos_emb": False}, {"use_type_emb": False},
    {"global_attn": True}, {"attn_scale": True}, {"leaky_slope": 0.3}, {"n_layers": 2},
    {"aggregator": "gcn"}, {"aggregator": "sage"}, {"aggregator": "gat"}, {"aggregator": "rgat"},
    {"code_num": 4}, {"code_k": 1}, {"code_assign": "euclidean"}, {"code_fit_items": "all"},
    {"code_reduce": "ae", "code_ae_epochs": 3}, {"code_init": "random"}, {"code_num": 0},
    {"modalities": ["text"]},
    {"missing_ratio": {"image": 0.5}}, {"missing_ratio": {"text": 0.5}, "missing_mode": "position"},
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_switch_changes_scores(switch):
    dataset = make_dataset(train_items=list(range(1, 30)))
    base = make_model(dataset)
    variant = make_model(dataset, **switch)
    shared = {k: v for k, v in base.state_dict().items()
              if k in variant.state_dict() and variant.state_dict()[k].shape == v.shape
              and "item_codes" not in k and "code_embeddings" not in k}
    variant.load_state_dict(shared, strict=False)
    with torch.no_grad():  # larger weights: sharper attention, so small effects show
        for parameter in list(base.parameters()) + list(variant.parameters()):
            parameter.mul_(2.0)
    seq, lengths = random_batch()
    before, after = scores(base, seq, lengths), scores(variant, seq, lengths)
    assert (before - after).abs().max() > 1e-3 * before.abs().max()


def test_bad_config_is_rejected():
    with pytest.raises(MMSRConfigError, match="modalities"):
        make_model(modalities=["audio"])
    with pytest.raises(MMSRConfigError, match="loss_type"):
        make_model(loss_type="BPR")
    with pytest.raises(ValueError, match="han_mode"):
        make_model(han_mode="fast")
    for codes in ({"code_num": -1}, {"code_num": 3, "code_k": 4}, {"code_num": 3, "code_k": 0}):
        with pytest.raises(MMSRConfigError, match="code_num.*MMSR.yaml"):
            make_model(**codes)


# ----------------------------------------------------------------------------- missing modality
def test_hidden_items_lose_their_nodes():
    model = make_model(missing_ratio={"image": 0.5})
    present = make_dataset().item_feature_mask["image"]
    hidden = model.hidden_items(0, present.clone())
    assert int(hidden.sum()) == round(0.5 * int(present.sum())) and not (hidden & ~present).any()
    assert torch.equal(hidden, make_model(missing_ratio={"image": 0.5}).hidden_items(0, present.clone()))
    assert not torch.equal(hidden, make_model(missing_ratio={"image": 0.5}, missing_seed=99)
                           .hidden_items(0, present.clone()))
    assert (model.eval_item_codes_0[hidden] == -1).all() and (model.train_item_codes_0[hidden] == -1).all()
    assert (model.eval_item_codes_0[present & ~hidden] >= 0).all()
    assert (model.eval_item_codes_1[1:] >= 0).all()  # text untouched
    items = torch.nonzero(hidden).flatten()[:L]
    graph = model.build_graph(items[None, :], torch.tensor([len(items)]))
    start, end = graph.type_slices[1]
    assert not graph.active[0, start:end].any()
    assert not (graph.relation[0, :, start:end] != 0).any()
    # hidden only at test time: training still sees the codes
    test_only = make_model(missing_ratio={"image": 0.5}, missing_phase="test")
    assert (test_only.train_item_codes_0[hidden] >= 0).all() and (test_only.eval_item_codes_0[hidden] == -1).all()


def test_all_images_missing_equals_text_only_model():
    both = make_model(missing_ratio={"image": 1.0})
    text = make_model(modalities=["text"])
    source, remap = both.state_dict(), {}
    for key in text.state_dict():  # type 2 (text) of `both` is type 1 of `text`
        name = key.replace("code_embeddings.0", "code_embeddings.1").replace("item_codes_0", "item_codes_1")
        for projection in ("query", "key", "value"):
            name = name.replace(f".{projection}.1.", f".{projection}.2.")
        remap[key] = source[name]
    remap["type_embedding.weight"] = source["type_embedding.weight"][[0, 2]]
    text.load_state_dict(remap)
    seq, lengths = random_batch()
    assert torch.allclose(scores(both, seq, lengths), scores(text, seq, lengths), atol=1e-5)


def test_position_mode_is_reproducible_per_evaluation():
    model = make_model(missing_ratio={"image": 0.5}, missing_mode="position")
    seq, lengths = random_batch()
    model.on_eval_start()
    first = scores(model, seq, lengths)
    model.on_eval_start()
    assert torch.equal(first, scores(model, seq, lengths))
    assert not torch.allclose(first, scores(model, seq, lengths))  # next draw differs


# ----------------------------------------------------------------------------- model behaviour
def test_determinism_and_no_leakage():
    dataset = make_dataset(train_items=list(range(1, 30)))
    a, b = make_model(dataset), make_model(dataset)
    seq, lengths = random_batch()
    assert torch.equal(a.eval_item_codes_0, b.eval_item_codes_0)
    assert torch.equal(a.code_embeddings[1].weight, b.code_embeddings[1].weight)
    assert torch.equal(scores(a, seq, lengths), scores(a, seq, lengths))
    assert torch.equal(scores(a, seq, lengths), scores(b, seq, lengths))
    changed = make_dataset(train_items=list(range(1, 30)))
    changed.item_features["text"][35] += 10.0  # item 35 is not a training item
    c = make_model(changed)
    assert torch.equal(a.code_embeddings[1].weight, c.code_embeddings[1].weight)


def test_scores_independent_of_batch_composition_and_padding():
    model = make_model()
    seq, lengths = random_batch()
    base = scores(model, seq, lengths)
    order = torch.randperm(len(seq), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(base[order], scores(model, seq[order], lengths[order]), atol=1e-5)
    short = lengths <= 4
    alone = scores(model, seq[short][:, :4], lengths[short])  # fewer PAD columns, other batch
    assert torch.allclose(base[short], alone, atol=1e-5)


@pytest.mark.parametrize("code_num", [5, 0])
def test_full_sort_predict_equals_predict_and_loss_is_ce(code_num):
    model = make_model(code_num=code_num)
    seq, lengths = random_batch(batch=3)
    full = scores(model, seq, lengths)
    for item in range(N_ITEMS):
        batch = {"item_id_list": seq, "item_length": lengths, "item_id": torch.full((3,), item)}
        with torch.no_grad():
            assert torch.allclose(model.predict(batch), full[:, item], atol=1e-5)
    target = torch.tensor([1, 2, 3])
    with torch.no_grad():
        loss = model.calculate_loss({"item_id_list": seq, "item_length": lengths, "item_id": target})
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(full, target), atol=1e-5)


def test_any_number_of_modalities():
    for modalities in (("text",), ("text", "genre"), ("image", "text", "genre")):
        model = make_model(make_dataset(modalities))
        seq, lengths = random_batch()
        out = scores(model, seq, lengths)
        assert out.shape == (len(seq), N_ITEMS) and torch.isfinite(out).all()
        assert len(model.build_graph(seq, lengths).type_slices) == 1 + len(modalities)


def test_large_batch_builds_without_a_loop_over_the_batch():
    tables = [torch.randint(0, 30, (500, 3)) for _ in range(2)]
    seq = torch.randint(1, 500, (512, 50))
    graph = build_msgraph(seq, torch.full((512,), 50), tables, [30, 30], "compact")
    assert graph.relation.shape[1] <= 50 + 60 and graph.active[:, :1].all()


# ----------------------------------------------------------------------------- end to end
@pytest.mark.skipif(not os.path.isdir(SCIENTIFIC), reason="shared scientific dataset absent")
def test_end_to_end_on_scientific(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    from recbole_mm.quick_start import run_recbole_mm

    result = run_recbole_mm(model="MMSR", dataset="scientific", saved=False, config_dict=dict(
        data_path=os.path.dirname(SCIENTIFIC), epochs=1, embedding_size=16, code_num=6, code_reduce="pca",
        train_batch_size=512, eval_batch_size=2048, MAX_ITEM_LIST_LENGTH=10, show_progress=False,
        state="ERROR", checkpoint_dir=str(tmp_path / "saved"), graph_cache_dir=str(tmp_path / "cache")))
    ndcg, mrr = result["test_result"]["ndcg@10"], result["test_result"]["mrr@10"]
    assert 0 <= mrr <= ndcg <= 1 and result["test_result"]["hit@20"] > 0
