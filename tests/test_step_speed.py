"""Fast training-step paths against slow, obviously correct ones (docs/benchmarks/mustrec.md).

- dropout masks from 16-bit integers: keep rate, scale and independence, element by element;
- torch's GELU/swish kernels in RecBole's feed-forward blocks: RecBole's values and gradients;
- the last query of MuSTRec's head on its allowed keys alone against the masked dense attention,
  with the same dropout mask;
- graph products through cached CSR copies against ``torch.sparse.mm`` (values and gradients);
- the allocator setting: a step-sized block comes from the heap and stays there after ``free``.
"""
import copy
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from recbole_mm.model.layers import dropout
from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.activation import ACTIVATIONS, activation, use_fused_activations
from recbole_mm.model.layers.dropout import MaskDropout, keep_mask, use_mask_dropout
from recbole_mm.model.layers.frequency_attention import MultiHeadSelfAttention, attention_mask
from recbole_mm.model.layers.sparse_matmul import graph_matmul


# ------------------------------------------------------------------ dropout masks
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    mask = keep_mask((4096, 256), p)  # 1,048,576 elements
    kept = mask != 0
    dropped = round(p * 65536)
    q = 1.0 - dropped / 65536
    assert abs(q - (1.0 - p)) < 1e-5
    values = mask.unique().tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(1.0 / q)]
    sd = math.sqrt(q * (1 - q) / kept.numel())
    assert abs(kept.float().mean().item() - q) < 5 * sd
    # four elements share one 64-bit draw: each of the four lanes must be fair on its own (a generator
    # that left the top bit of a word at 0 would bias the fourth lane)
    lanes = kept.reshape(-1, 4).float().mean(0)
    assert (lanes - q).abs().max().item() < 5 * sd * 2
    # neighbours are independent: P(both kept) = q^2
    both = (kept.reshape(-1, 2).all(1)).float().mean().item()
    assert abs(both - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / (kept.numel() / 2))
    assert abs(mask.mean().item() - 1.0) < 5 * sd / q  # inverted dropout: expectation kept


def test_keep_mask_is_seeded_and_fresh_per_call():
    torch.manual_seed(3)
    first, second = keep_mask((7, 5), 0.5), keep_mask((7, 5), 0.5)
    torch.manual_seed(3)
    assert torch.equal(keep_mask((7, 5), 0.5), first)
    assert not torch.equal(first, second)
    assert keep_mask((3,), 0.0).eq(1.0).all()  # rate 0 keeps everything, unscaled
    assert keep_mask((1000,), 1.0 - 1e-7).eq(0.0).all()  # within 1/131072 of 1: nothing kept
    layer = MaskDropout(1.0).train()  # as nn.Dropout(1.0): zeros, and zero gradients
    x = torch.ones(4, 3, requires_grad=True)
    assert layer(x).eq(0).all() and torch.autograd.grad(layer(x).sum(), x)[0].eq(0).all()


def test_mask_dropout_multiplies_value_and_gradient_by_the_same_mask(monkeypatch):
    drawn = []
    monkeypatch.setattr(dropout, "keep_mask",
                        lambda *a, **k: drawn.append(keep_mask(*a, **k)) or drawn[-1])
    layer = MaskDropout(0.5).train()
    x = torch.randn(6, 9, requires_grad=True)
    out = layer(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, x * drawn[0])
    torch.testing.assert_close(grad, drawn[0])
    assert layer.eval()(x) is x


def test_use_mask_dropout_swaps_every_dropout_of_recboles_encoder():
    from recbole.model.layers import TransformerEncoder

    encoder = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=8, inner_size=16, hidden_dropout_prob=0.3,
                                 attn_dropout_prob=0.2)
    rates = sorted(m.p for m in encoder.modules() if type(m) is torch.nn.Dropout)
    assert use_mask_dropout(encoder) == len(rates) == 6  # per layer: attention probs, attention out, FFN
    assert not any(type(m) is torch.nn.Dropout for m in encoder.modules())
    assert sorted(m.p for m in encoder.modules() if isinstance(m, MaskDropout)) == rates
    x, mask = torch.randn(3, 5, 8), torch.zeros(3, 1, 5, 5)
    encoder.eval()
    torch.testing.assert_close(encoder(x, mask)[-1], encoder(x, mask)[-1])  # no dropout in evaluation
    encoder.train()
    assert not torch.allclose(encoder(x, mask)[-1], encoder(x, mask)[-1])  # and fresh masks in training


@pytest.mark.parametrize("name", ["gelu", "swish"])
def test_fused_activations_give_recboles_values_and_gradients(name):
    from recbole.model.layers import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=8, inner_size=16, hidden_dropout_prob=0.0,
                                 attn_dropout_prob=0.0, hidden_act=name)
    fused = copy.deepcopy(encoder)
    assert use_fused_activations(fused) == 2
    assert all(block.intermediate_act_fn is ACTIVATIONS[name] for block in fused.modules()
               if type(block).__name__ == "FeedForward")
    x, mask = torch.randn(3, 5, 8), torch.zeros(3, 1, 5, 5)
    out, fused_out = encoder(x, mask)[-1], fused(x, mask)[-1]
    torch.testing.assert_close(fused_out, out, atol=1e-6, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(out.square().sum(), list(encoder.parameters())),
                    torch.autograd.grad(fused_out.square().sum(), list(fused.parameters()))):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_unknown_activation_names_the_config_key():
    with pytest.raises(ConfigError, match="hidden_act"):
        activation("gleu")


# ------------------------------------------------------------------ ragged last-query attention
def masked_last_query(module, x, mask, probs_keep=None):
    """The last query's attention as the masked dense path computes it, dropout applied to the
    probabilities with ``probs_keep`` (``[B, heads, 1, L]``)."""
    batch, length, hidden = x.shape
    heads = lambda t: t.view(batch, -1, module.n_heads, module.head_size).transpose(1, 2)
    q, k, v = heads(module.query(x[:, -1:])), heads(module.key(x)), heads(module.value(x))
    probs = (q @ k.transpose(-1, -2) / math.sqrt(module.head_size) + mask[..., -1:, :]).softmax(-1)
    if probs_keep is not None:
        probs = probs * probs_keep
    context = (probs @ v).transpose(1, 2).reshape(batch, 1, hidden)
    return module.layer_norm(x[:, -1:] + module.output(context))


def test_last_query_on_allowed_keys_with_dropout_equals_the_masked_attention(monkeypatch):
    torch.manual_seed(0)
    module = MultiHeadSelfAttention(hidden_size=8, n_heads=2, attn_dropout=0.5, hidden_dropout=0.0,
                                    layer_norm_eps=1e-12).train()
    lengths = torch.tensor([1, 3, 2, 1, 4, 2])
    valid = torch.arange(12)[None, :] >= (12 - lengths)[:, None]
    mask = attention_mask(valid)
    x = torch.randn(6, 12, 8, requires_grad=True)
    drawn = []
    monkeypatch.setattr(dropout, "keep_mask",
                        lambda *a, **k: drawn.append(keep_mask(*a, **k)) or drawn[-1])
    out = module(x, mask, last_only=True)
    (probs_keep_rows,) = drawn  # one mask: the allowed (key, head) pairs, nothing for padding
    assert probs_keep_rows.shape == (int(lengths.sum()), 2)
    probs_keep = torch.zeros(6, 12, 2)
    probs_keep[valid] = probs_keep_rows  # row-major order of the allowed keys
    expected = masked_last_query(module, x, mask, probs_keep.permute(0, 2, 1).unsqueeze(2))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *module.parameters()])
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_last_query_with_a_mask_shared_by_the_batch_equals_the_masked_attention():
    torch.manual_seed(0)
    module = MultiHeadSelfAttention(hidden_size=8, n_heads=2, attn_dropout=0.0, hidden_dropout=0.0,
                                    layer_norm_eps=1e-12).eval()
    shared = attention_mask((torch.arange(12) >= 9).unsqueeze(0))  # [1, 1, 12, 12]: the last 3 keys, every row
    x = torch.randn(5, 12, 8)
    torch.testing.assert_close(module(x, shared, last_only=True), masked_last_query(module, x, shared),
                               atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ graph products
def random_graph(rows, cols, nnz, seed):
    generator = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randint(0, rows, (nnz,), generator=generator),
                         torch.randint(0, cols, (nnz,), generator=generator)])
    return torch.sparse_coo_tensor(index, torch.rand(nnz, generator=generator), (rows, cols)).coalesce()


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_graph_matmul_equals_sparse_mm_in_value_and_gradient(layout):
    graph = random_graph(30, 20, 120, seed=1)  # not square, not symmetric: the backward needs A^T
    adjacency = graph if layout == "coo" else graph.to_sparse_csr()
    x = torch.randn(20, 5, requires_grad=True)
    out = graph_matmul(adjacency, x)
    expected = graph.to_dense() @ x
    torch.testing.assert_close(out, expected)
    upstream = torch.randn(30, 5)
    (grad,) = torch.autograd.grad(out, x, upstream)
    torch.testing.assert_close(grad, graph.to_dense().t() @ upstream)
    with torch.no_grad():
        torch.testing.assert_close(graph_matmul(adjacency, x), expected)
    dense = graph.to_dense()
    torch.testing.assert_close(graph_matmul(dense, x), expected)


def test_graph_matmul_follows_an_in_place_change_of_the_graph():
    graph = random_graph(10, 10, 30, seed=2)
    x = torch.randn(10, 3)
    before = graph_matmul(graph, x)
    graph.copy_(random_graph(10, 10, 30, seed=3))  # e.g. load_state_dict into the buffer
    torch.testing.assert_close(graph_matmul(graph, x), random_graph(10, 10, 30, seed=3).to_dense() @ x)
    assert not torch.allclose(before, graph_matmul(graph, x))


def test_cached_copies_stay_out_of_deepcopies_and_pickles():
    import io

    holder = torch.nn.Module()
    holder.register_buffer("graph", random_graph(8, 8, 20, seed=5), persistent=False)
    x = torch.randn(8, 2, requires_grad=True)
    graph_matmul(holder.graph, x).sum().backward()  # fills the cache
    clone = copy.deepcopy(holder)  # a CSR tensor cannot be deep-copied: the cache must not travel
    torch.testing.assert_close(graph_matmul(clone.graph, x), holder.graph.to_dense() @ x)
    buffer = io.BytesIO()
    torch.save(holder, buffer)
    assert b"sparse_csr" not in buffer.getvalue()


def test_trained_mustrec_can_still_be_deep_copied():
    from test_mustrec import FakeDataset, build

    dataset = FakeDataset()
    model = build(dataset, seed=1)
    model.train()
    model.calculate_loss(dataset.inter_feat).backward()
    clone = copy.deepcopy(model)
    clone.eval()
    model.eval()
    torch.testing.assert_close(clone.full_sort_predict(dataset.inter_feat), model.full_sort_predict(dataset.inter_feat))


def test_graph_matmul_lets_a_trainable_graph_get_its_gradient():
    graph = random_graph(6, 6, 12, seed=4).requires_grad_()
    x = torch.randn(6, 2)
    graph_matmul(graph, x).sum().backward()
    assert graph.grad is not None


# ------------------------------------------------------------------ allocator
ALLOCATOR_SCRIPT = textwrap.dedent("""
    import ctypes, sys, torch
    from recbole_mm.utils import keep_freed_memory

    class MallInfo2(ctypes.Structure):  # glibc >= 2.33
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    before = libc.mallinfo2()
    block = torch.empty(5 << 20).fill_(1.0)  # 20 MB, as a step's activations
    during = libc.mallinfo2()
    del block
    after = libc.mallinfo2()
    print(during.hblkhd - before.hblkhd, during.arena - before.arena, after.arena - during.arena)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_serves_blocks_from_the_heap_and_keeps_them():
    def allocator(mode):
        result = subprocess.run([sys.executable, "-c", ALLOCATOR_SCRIPT, mode], capture_output=True, text=True)
        if "mallinfo2" in result.stderr:
            pytest.skip("glibc older than 2.33 (no mallinfo2)")
        assert result.returncode == 0, result.stderr
        return [int(value) for value in result.stdout.split()]

    mapped, grown, released = allocator("keep")
    assert mapped == 0 and grown >= 20 << 20  # from the heap...
    assert released == 0  # ...and still there after the free, for the next step to reuse
