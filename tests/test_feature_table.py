"""FeatureTable: nn.Embedding's gradient, bit for bit, in a recycled buffer."""
import torch

from recbole_mm.model.layers.feature_table import FeatureTable


def lookups(table, steps, zero_grad):
    """Gradients after each step of a small quadratic loss through the table's rows."""
    generator = torch.Generator().manual_seed(1)
    weight_out = torch.randn(7, 3, generator=generator)
    grads, pointers = [], []
    for _ in range(steps):
        index = torch.randint(0, 50, (4, 6), generator=generator)
        if zero_grad:
            table.weight.grad = None  # what optimizer.zero_grad() does (set_to_none=True)
        (table(index) @ weight_out).pow(2).sum().backward()
        grads.append(table.weight.grad.clone())
        pointers.append(table.weight.grad.data_ptr())
    return grads, pointers


def test_gradient_equals_embedding_and_buffer_is_reused():
    features = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    ours, pointers = lookups(FeatureTable(features), 4, zero_grad=True)
    reference, _ = lookups(torch.nn.Embedding.from_pretrained(features.clone(), freeze=False), 4, zero_grad=True)
    for a, b in zip(ours, reference):
        assert torch.equal(a, b) and a.abs().sum() > 0
    assert len(set(pointers[1:])) == 1  # no new gradient tensor after the first step


def test_accumulating_without_zero_grad_is_not_overwritten():
    features = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    ours, _ = lookups(FeatureTable(features), 3, zero_grad=False)
    reference, _ = lookups(torch.nn.Embedding.from_pretrained(features.clone(), freeze=False), 3, zero_grad=False)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)
    assert not torch.equal(ours[2], ours[0])  # the sum really grew


def test_frozen_table_and_no_grad_lookup():
    features = torch.arange(12.0).view(4, 3)
    frozen = FeatureTable(features, trainable=False)
    rows = frozen(torch.tensor([[3, 0]]))
    assert torch.equal(rows, features[[3, 0]].unsqueeze(0)) and not rows.requires_grad
    assert frozen.weight.grad is None and not frozen.weight.requires_grad
    with torch.no_grad():
        assert torch.equal(FeatureTable(features)(torch.tensor([1])), features[[1]])
    features[0, 0] = 99.0  # the table owns a copy
    assert frozen.weight[0, 0] == 0


def test_gradient_kept_elsewhere_or_other_dtype_is_not_reused():
    features = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    table = FeatureTable(features)
    lookups(table, 1, zero_grad=True)
    held = table.weight.grad  # e.g. a logging callback keeping last step's gradient
    snapshot = held.clone()
    table.weight.grad = None
    table(torch.tensor([3, 3, 49])).sum().backward()  # other rows than the first step's
    assert torch.equal(held, snapshot) and table.weight.grad is not held
    assert table.weight.grad[3].eq(2).all() and table.weight.grad.sum() == 3 * 7
    table.double()  # the spare buffer is float32: a new float64 gradient is made
    weight_out = torch.randn(7, 3, dtype=torch.float64)
    table.weight.grad = None
    (table(torch.tensor([1, 2])) @ weight_out).sum().backward()
    assert table.weight.grad.dtype == torch.float64


def test_tables_that_cannot_fit_fail_before_allocating_and_name_the_setting(monkeypatch):
    import pytest

    from recbole_mm.errors import ConfigError
    from recbole_mm.model.layers import feature_table
    from test_mustrec import FakeDataset, build

    dataset = FakeDataset()  # tables 13 x 6 and 13 x 5: 572 bytes of float32 each way
    need_trainable = (13 * 6 + 13 * 5) * 4 * 4
    monkeypatch.setattr(feature_table, "device_memory_bytes", lambda device: need_trainable)  # 80 % < need
    with pytest.raises(ConfigError, match="train_raw_features: false"):
        build(dataset)
    assert build(dataset, train_raw_features=False).feature_tables["image"].weight.requires_grad is False
    monkeypatch.setattr(feature_table, "device_memory_bytes", lambda device: need_trainable * 2)
    assert build(dataset).feature_tables["image"].weight.requires_grad
