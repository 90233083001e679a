"""Leakage guarantee: graphs built from the training split never touch valid/test-only items.

Every user's validation and test items are fresh items that occur nowhere else, so any
user-item or co-occurrence edge touching them (or any k-means fit on them) is a leak.
"""
import os

import numpy as np
import torch
from recbole.data import data_preparation

from conftest import tiny_run_config
from recbole_mm.config import Config
from recbole_mm.graphs import (DegreePruner, cooccurrence_matrix, knn_graph, modality_codes,
                               user_item_adjacency)
from recbole_mm.quick_start import create_dataset


def write_leaky_candidate(root, n_users=12, n_shared=10, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "leak")
    os.makedirs(folder, exist_ok=True)
    lines, held_out, next_item = ["user_id:token\titem_id:token\ttimestamp:float"], set(), n_shared
    for u in range(n_users):
        history = rng.choice(n_shared, size=int(rng.integers(3, 7)), replace=False).tolist()
        valid_item, test_item = next_item, next_item + 1
        next_item += 2
        held_out |= {valid_item, test_item}
        # ties at the end of the history: the file order decides, as documented
        times = list(range(len(history))) + [len(history) - 1, len(history) - 1]
        for item, t in zip(history + [valid_item, test_item], times):
            lines.append(f"{u}\t{item}\t{t}")
    with open(os.path.join(folder, "leak.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    feats = np.random.default_rng(1).standard_normal((next_item, 8)).astype(np.float32)
    np.save(os.path.join(folder, "text_feat.npy"), feats)
    return {"data_path": root, "held_out": held_out}


def test_no_graph_edge_touches_valid_or_test_items(tmp_path, in_tmp):
    info = write_leaky_candidate(str(tmp_path / "data"))
    config = Config(model="SASRec", dataset="leak", parse_argv=False, config_dict=tiny_run_config(
        tmp_path, data_path=info["data_path"], multimodal_features={"text": {"file": "text_feat.npy"}}))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    train_ds = train.dataset
    tokens = list(dataset.field2id_token[dataset.iid_field])
    held = sorted(tokens.index(str(i)) for i in info["held_out"])
    n_users, n_items = train_ds.user_num, train_ds.item_num

    inter = train_ds.train_interaction_matrix()
    assert inter[:, held].nnz == 0
    adjacency = user_item_adjacency(inter).to_dense()
    held_nodes = [n_users + i for i in held]
    assert torch.all(adjacency[held_nodes] == 0) and torch.all(adjacency[:, held_nodes] == 0)
    pruner = DegreePruner(inter, keep_ratio=0.5, seed=0)
    for _ in range(3):
        pruned = pruner.sample().to_dense()
        assert torch.all(pruned[held_nodes] == 0) and torch.all(pruned[:, held_nodes] == 0)
    for mode in ("adjacent", "all"):
        cooc = cooccurrence_matrix(train_ds.train_sequences(), n_items, mode=mode,
                                   weight="inverse_distance").toarray()
        assert np.all(cooc[held] == 0) and np.all(cooc[:, held] == 0)
        assert cooc.sum() > 0  # the graph is not trivially empty

    # k-means codes fitted on training items only: moving held-out features changes no centre
    features = train_ds.item_features["text"]
    mask = train_ds.item_feature_mask["text"]
    fit = torch.zeros(n_items, dtype=torch.bool)
    fit[np.unique(inter.indices)] = True
    assert not fit[held].any()
    centres, _, _ = modality_codes(features, 3, 1, seed=0, fit_mask=fit, valid_mask=mask)
    moved = features.clone()
    moved[held] += 50.0
    centres2, _, _ = modality_codes(moved, 3, 1, seed=0, fit_mask=fit, valid_mask=mask)
    assert torch.equal(centres, centres2)
    # content kNN may link held-out items (features are not interactions), but never PAD
    graph = knn_graph(features, 3, valid_mask=mask).to_dense()
    assert torch.all(graph[0] == 0) and torch.all(graph[:, 0] == 0)

    # the split agrees with the file order at tied timestamps: valid/test are the fresh items
    valid_targets = valid.dataset.inter_feat[valid.dataset.iid_field].tolist()
    test_targets = test.dataset.inter_feat[test.dataset.iid_field].tolist()
    assert set(valid_targets) | set(test_targets) == set(held)
