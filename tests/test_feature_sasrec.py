"""FeatureSASRec (a baseline of ours): the item table is E_id + sum_m W_m x_m, by hand, in lookups
and in the whole-table scores; use_id_embedding: false removes E_id; it trains and evaluates."""
import torch

from recbole_mm.model.feature_sasrec import FeatureItemTable
from recbole_mm.quick_start import run_recbole_mm
from tests.conftest import tiny_run_config


def test_item_table_is_id_embedding_plus_projected_features():
    torch.manual_seed(0)
    features = {"text": torch.randn(5, 3), "image": torch.randn(5, 2)}
    table = FeatureItemTable(5, 4, features)
    ids = torch.tensor([[1, 4], [0, 2]])
    by_hand = (table.id_embedding.weight[ids] + features["text"][ids] @ table.projections["text"].weight.T
               + features["image"][ids] @ table.projections["image"].weight.T)
    assert torch.allclose(table(ids), by_hand, atol=1e-6)
    assert torch.allclose(table.weight[ids], by_hand, atol=1e-6)
    feature_only = FeatureItemTable(5, 4, features, use_id_embedding=False)
    assert feature_only.id_embedding is None
    assert torch.allclose(feature_only(ids), features["text"][ids] @ feature_only.projections["text"].weight.T
                          + features["image"][ids] @ feature_only.projections["image"].weight.T, atol=1e-6)


def test_feature_sasrec_trains_and_the_switch_changes_results(tmp_path, tiny_dataset, in_tmp):
    import os

    import numpy as np

    rng = np.random.default_rng(0)
    for modality, dim in tiny_dataset["dims"].items():  # features of the scale of the ID embeddings
        np.save(os.path.join(tiny_dataset["folder"], f"{modality}_feat.npy"), rng.normal(0, 0.05, (40, dim)).astype("float32"))
    results = {}
    for use_id in (True, False):
        config = tiny_run_config(tmp_path, data_path=tiny_dataset["data_path"], embedding_size=8, hidden_size=8,
                                 inner_size=16, multimodal_features=tiny_dataset["features"], use_id_embedding=use_id,
                                 epochs=2)
        results[use_id] = run_recbole_mm("FeatureSASRec", tiny_dataset["name"], config_dict=config,
                                         record_target_ranks=True)
    assert all(0.0 <= v <= 1.0 for v in results[True]["test_result"].values())
    assert results[True]["test_target_ranks"]["rank"] != results[False]["test_target_ranks"]["rank"]
