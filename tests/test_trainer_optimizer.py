"""The fused Adam of MMTrainer: same updates as RecBole's Adam, used only where asked and possible."""
import copy

import pytest
import torch

from conftest import tiny_run_config
from recbole_mm import registry
from recbole_mm.config import Config
from recbole_mm.trainer import MMTrainer, fused_twin
from test_mustrec import FakeDataset, build


def train_steps(model, dataset, optimizer, steps=4):
    for epoch in range(steps):
        model.on_epoch_start(epoch)
        optimizer.zero_grad()
        model.calculate_loss(dataset.inter_feat).backward()
        optimizer.step()


def test_fused_adam_matches_recbole_adam_on_mustrec():
    dataset = FakeDataset()
    reference = build(dataset, seed=5, ui_keep_ratio=1.0)
    fused_model = copy.deepcopy(reference)
    # RecBole's own construction (Trainer._build_optimizer, learner adam) is the slow reference
    train_steps(reference, dataset, torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=0.001))
    optimizer = fused_twin(torch.optim.Adam(fused_model.parameters(), lr=0.01, weight_decay=0.001))
    assert optimizer.defaults["fused"] is True
    train_steps(fused_model, dataset, optimizer)
    moved = 0
    for (name, a), b in zip(reference.named_parameters(), fused_model.parameters()):
        if name.endswith("key.bias"):  # softmax ignores it: its gradient is rounding noise Adam rescales
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(a, build(dataset, seed=5, ui_keep_ratio=1.0).state_dict()[name]))
    assert moved > 5  # the comparison is about trained parameters, not the initial ones


def test_fused_optimizer_keeps_param_groups_and_falls_back():
    weight, bias = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.zeros(2))
    groups = [{"params": [weight], "lr": 0.5}, {"params": [bias]}]
    optimizer = fused_twin(torch.optim.AdamW(groups, lr=0.01, weight_decay=0.1))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert all(g["fused"] for g in optimizer.param_groups)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.01]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.1]
    sgd = torch.optim.SGD([weight], lr=0.01)
    assert fused_twin(sgd) is sgd  # no fused kernel asked for
    integer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2, dtype=torch.int64), requires_grad=False)])
    assert fused_twin(integer) is integer


@pytest.mark.parametrize("overrides,fused", [({}, True), ({"fused_optimizer": False}, None),
                                             ({"learner": "sgd"}, None)])
def test_mmtrainer_builds_fused_adam_unless_switched_off(tmp_path, in_tmp, overrides, fused):
    config = Config(model="MuSTRec", dataset="tiny",
                    config_dict=tiny_run_config(tmp_path, data_path=str(tmp_path), **overrides))
    trainer = registry.get_trainer(config["MODEL_TYPE"], "MuSTRec")(config, build(FakeDataset()))
    assert isinstance(trainer, MMTrainer)
    assert trainer.optimizer.defaults.get("fused") is fused
    expected = torch.optim.SGD if overrides.get("learner") == "sgd" else torch.optim.Adam
    assert type(trainer.optimizer) is expected


def test_recbole_models_keep_recbole_optimizer(tmp_path, in_tmp):
    config = Config(model="SASRec", dataset="ml-100k", config_dict=tiny_run_config(tmp_path))
    trainer_class = registry.get_trainer(config["MODEL_TYPE"], "SASRec")
    assert not issubclass(trainer_class, MMTrainer)


@pytest.mark.parametrize("overrides,applied", [({}, True), ({"cpu_keep_freed_memory": False}, False)])
def test_trainer_sets_the_allocator_unless_switched_off(tmp_path, in_tmp, monkeypatch, overrides, applied):
    calls = []
    monkeypatch.setattr("recbole_mm.trainer.keep_freed_memory", lambda: calls.append(1))
    config = Config(model="MuSTRec", dataset="tiny",
                    config_dict=tiny_run_config(tmp_path, data_path=str(tmp_path), **overrides))
    registry.get_trainer(config["MODEL_TYPE"], "MuSTRec")(config, build(FakeDataset()))
    assert calls == ([1] if applied else [])
