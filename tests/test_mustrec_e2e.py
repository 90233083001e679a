"""MuSTRec end to end through recbole_mm (RecBole data pipeline + MuSTRecTrainer), tiny CPU runs."""
import math
import os

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from conftest import tiny_run_config
from recbole_mm.config import Config
from recbole_mm.model.mustrec import MuSTRec, MuSTRecTrainer
from recbole_mm.quick_start import create_dataset, run_recbole_mm


SMALL = dict(embedding_size=8, inner_size=16, knn_k=3, train_batch_size=64,
             load_col={"inter": ["user_id", "item_id", "timestamp"]})


def tiny_config(tmp_path, info, **overrides):
    return tiny_run_config(tmp_path, data_path=info["data_path"], multimodal_features=info["features"],
                           **{**SMALL, **overrides})


def test_same_seed_identical_metrics_in_unit_range(in_tmp, tiny_dataset):
    results = [run_recbole_mm("MuSTRec", "tiny", config_dict=tiny_config(in_tmp, tiny_dataset, epochs=2),
                              saved=False) for _ in range(2)]
    assert results[0]["test_result"] == results[1]["test_result"]
    assert results[0]["best_valid_result"] == results[1]["best_valid_result"]
    for value in results[0]["test_result"].values():
        assert 0.0 <= value <= 1.0 and math.isfinite(value)


def test_pretrain_variant_runs_two_stages_from_one_command(in_tmp, tiny_dataset):
    config = tiny_config(in_tmp, tiny_dataset, epochs=2, variant="S+U")
    result = run_recbole_mm("MuSTRec", "tiny", config_dict=config, saved=True)
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())
    saved = [f for f in os.listdir(in_tmp / "saved") if f.endswith(".pth")]
    stage_one = [f for f in saved if f.endswith("-graph-stage.pth")]
    checkpoint = os.path.basename(result["checkpoint"])
    assert len(stage_one) == 1 and sorted(saved) == sorted(
        [stage_one[0], checkpoint, checkpoint.replace(".pth", "-last.pth")])
    reuse = dict(config, pretrained_graph_path=str(in_tmp / "saved" / stage_one[0]))
    again = run_recbole_mm("MuSTRec", "tiny", config_dict=reuse, saved=False)
    assert all(0.0 <= v <= 1.0 for v in again["test_result"].values())


def test_pretrain_variant_checkpoint_reloads_with_identical_scores(in_tmp, tiny_dataset):
    from recbole_mm.quick_start import load_data_and_model

    config = Config("MuSTRec", "tiny", config_dict=tiny_config(in_tmp, tiny_dataset, epochs=2, variant="S",
                                                                seq_item_source="id"), parse_argv=False)
    init_seed(config["seed"], True)
    train, valid, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], True)
    trainer = MuSTRecTrainer(config, MuSTRec(config, train.dataset))
    trainer.fit(train, valid, verbose=False, saved=True)
    trainer.evaluate(test, load_best_model=True)  # the trained model now holds the best checkpoint
    batch = next(iter(test))[0]
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model.full_sort_predict(batch.to(model.device))
    _, reloaded, *_ = load_data_and_model(trainer.saved_model_file)
    reloaded.eval()
    assert reloaded.stage == "head"
    with torch.no_grad():
        torch.testing.assert_close(reloaded.full_sort_predict(batch.to(reloaded.device)), expected)


def write_tied_dataset(root):
    """Users whose last items share one timestamp: split, sequences and graph must agree."""
    folder = os.path.join(root, "tied")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    sequences = {}
    for user in range(25):
        items = rng.choice(30, size=int(rng.integers(5, 9)), replace=False)
        sequences[user] = [str(i) for i in items]
        for t, item in enumerate(items):
            lines.append(f"{user}\t{item}\t{min(t, 3)}")  # every item from the 4th on is tied
    with open(os.path.join(folder, "tied.inter"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    np.save(os.path.join(folder, "text_feat.npy"), rng.normal(size=(30, 5)).astype(np.float32))
    return {"data_path": str(root), "features": {"text": {"file": "text_feat.npy"}}}, sequences


def test_graph_holds_training_items_only_with_timestamp_ties(in_tmp):
    info, sequences = write_tied_dataset(str(in_tmp / "data"))
    config = Config("MuSTRec", "tied", config_dict=tiny_config(in_tmp, info, epochs=3, learning_rate=0.01,
                                                                hidden_dropout_prob=0.1, attn_dropout_prob=0.1))
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = MuSTRec(config, train.dataset)
    tokens = dataset.field2id_token[dataset.iid_field]
    users = dataset.field2id_token[dataset.uid_field]
    r = train.dataset.train_interaction_matrix().toarray()
    for uid in range(1, len(users)):
        seq = sequences[int(users[uid])]
        got = {tokens[i] for i in np.nonzero(r[uid])[0]}
        assert got == set(seq[:-2])  # all but the last two, in file order
    a = model.ui_graph_full.to_dense()[: dataset.user_num, dataset.user_num:].numpy()
    np.testing.assert_array_equal(a > 0, r > 0)
    trainer = MuSTRecTrainer(config, model)
    trainer.fit(train, valid, verbose=False, saved=False)  # runs the eval-input leakage check
    losses = [trainer.train_loss_dict[e] for e in range(3)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_injected_test_edge_fails_leakage_check(in_tmp):
    info, _ = write_tied_dataset(str(in_tmp / "data"))
    config = Config("MuSTRec", "tied", config_dict=tiny_config(in_tmp, info))
    dataset = create_dataset(config)
    train, _, test = data_preparation(config, dataset)
    row = test.dataset.inter_feat[0]
    user, item = int(row[dataset.uid_field]), int(row[dataset.iid_field])
    leaky = train.dataset.train_interaction_matrix().tolil()
    leaky[user, item] = 1.0
    train.dataset.train_interaction_matrix = lambda: leaky.tocsr()
    with pytest.raises(ValueError, match="leakage_check"):
        MuSTRec(config, train.dataset)
    config["leakage_check"] = False
    torch.manual_seed(0)
    MuSTRec(config, train.dataset)  # the check is the only thing that objects
