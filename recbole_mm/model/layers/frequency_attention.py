"""Frequency-aware self-attention encoder (BSARec block), shared by sequential heads.

Reference: Shin et al., "An Attentive Inductive Bias for Sequential Recommendation beyond the
Self-Attention" (BSARec, AAAI 2024), used as the head of MuSTRec (Eqs 11-16 of the MuSTRec
paper). One block maps ``X`` (``[B, L, d]``) to ``X'``:

    frequency branch  Z = rfft(X, over the sequence, norm="ortho")
                      LFC = irfft(Z with bins >= c' zeroed, n=L),   c' = floor(c / 2) + 1
                      HFC = X - LFC
                      F = LN(X + Dropout(LFC + beta * HFC)),        beta = b**2, b ~ N(0, 1)
    attention branch  G = LN(X + Dropout(W_o MultiHead(X, mask)))
    mix               H = alpha * F + (1 - alpha) * G
    feed-forward      X' = LN(H + Dropout(W_2 act(W_1 H + b_1) + b_2))

The mask is built by :func:`attention_mask`: causal AND key is not padding, added as -10000,
so a query with no valid key gets a uniform (not NaN) attention row. The encoder is agnostic
of the padding side; MuSTRec feeds left-padded sequences (most recent item at ``L - 1``),
see :func:`right_to_left_padding`.

Speed (docs/benchmarks/eval.md, docs/benchmarks/mustrec.md), same outputs up to float rounding:

- the low-pass filter is a fixed linear map along the sequence, ``LFC = P X`` with
  ``P = irfft(keep * rfft(I))`` (an ``L x L`` projection, computed once per length), applied as
  one matrix product instead of an FFT pair;
- ``encoder(x, mask, last_only=True)`` returns only the last position: every block but the last
  runs on all positions (the last one reads them as keys, values and frequency input), the last
  block computes its query, feed-forward and normalisation for the last row only, and in
  training draws its dropout masks for that row only. A model whose loss and scores read only
  the last position (MuSTRec) gets the same numbers in evaluation and the same distribution of
  updates in training;
- when a sequence is short next to ``L``, the last block's query is computed over that sequence's
  own keys only (keys and values projected for those rows, a softmax per sequence): the masked
  keys' weights are exactly 0 in the dense form, so this gives the same result;
- dropout masks come from random 16-bit integers, four per 64-bit draw
  (:class:`recbole_mm.model.layers.dropout.MaskDropout`), instead of one float per element.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F

from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.activation import activation
from recbole_mm.model.layers.dropout import MaskDropout

__all__ = [
    "FrequencyFilter", "MultiHeadSelfAttention", "PositionwiseFeedForward",
    "FrequencyAttentionBlock", "FrequencyAttentionEncoder", "attention_mask",
    "right_to_left_padding",
]

MASK_VALUE = -10000.0
KEY_ROWS_WORTH_GATHERING = 0.5  # the last query runs on its allowed keys alone below this share of L


def right_to_left_padding(item_seq, item_seq_len):
    """Move RecBole's right-padded rows (items first, PAD 0 after) to left padding.

    Row ``b`` of the result holds PAD in front and item ``item_seq[b, len-1]`` at position
    ``L - 1``.
    """
    batch, length = item_seq.shape
    positions = torch.arange(length, device=item_seq.device).unsqueeze(0)
    shift = (length - item_seq_len).unsqueeze(1)  # how far each row moves right
    source = positions - shift  # position in the right-padded row
    valid = source >= 0
    gathered = item_seq.gather(1, source.clamp_min(0))
    return torch.where(valid, gathered, torch.zeros_like(gathered))


def attention_mask(valid_positions, causal=True):
    """Additive mask ``[B, 1, L, L]``: 0 where query may attend key, -10000 elsewhere.

    ``valid_positions`` is ``[B, L]`` bool (False at padding).
    """
    length = valid_positions.shape[1]
    allowed = valid_positions[:, None, None, :]  # key must be a real position
    if causal:
        lower = torch.ones(length, length, dtype=torch.bool, device=valid_positions.device).tril()
        allowed = allowed & lower[None, None]
    return torch.where(allowed, 0.0, MASK_VALUE).float()


class FrequencyFilter(nn.Module):
    """Low-pass / high-pass split in the frequency domain with a learned HFC rescaler."""

    def __init__(self, hidden_size, c, dropout, layer_norm_eps):
        super().__init__()
        self.kept_bins = c // 2 + 1
        self.sqrt_beta = nn.Parameter(torch.randn(1, 1, hidden_size))
        self.dropout = MaskDropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self._low_pass = {}  # (length, dtype, device) -> P

    def low_pass_matrix(self, length, dtype=torch.float32, device=None):
        """``P`` (``[L, L]``) with ``P X = irfft(keep * rfft(X, ortho), ortho)`` along dim 0:
        the FFT pair applied to the identity, in float64, once per (length, dtype, device)."""
        key = (length, dtype, str(device))
        if key not in self._low_pass:
            identity = torch.eye(length, dtype=torch.float64)
            spectrum = torch.fft.rfft(identity, dim=0, norm="ortho")
            spectrum[self.kept_bins:] = 0
            matrix = torch.fft.irfft(spectrum, n=length, dim=0, norm="ortho")
            self._low_pass[key] = matrix.to(dtype=dtype, device=device)
        return self._low_pass[key]

    def split(self, x, last_only=False):
        """Return ``(LFC, HFC)`` of ``x`` ``[B, L, d]`` along the sequence axis (last row only
        with ``last_only``)."""
        matrix = self.low_pass_matrix(x.shape[1], x.dtype, x.device)
        if last_only:
            matrix, x_out = matrix[-1:], x[:, -1:]
        else:
            x_out = x
        low = torch.matmul(matrix, x)
        return low, x_out - low

    def forward(self, x, last_only=False):
        low, high = self.split(x, last_only)
        mixed = low + self.sqrt_beta.pow(2) * high
        residual = x[:, -1:] if last_only else x
        return self.layer_norm(residual + self.dropout(mixed))


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention (scores / sqrt(head size)) with residual + LN."""

    def __init__(self, hidden_size, n_heads, attn_dropout, hidden_dropout, layer_norm_eps):
        super().__init__()
        if hidden_size % n_heads:
            raise ConfigError(f"hidden_size ({hidden_size}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = MaskDropout(attn_dropout)
        self.out_dropout = MaskDropout(hidden_dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_size).transpose(1, 2)

    def _last_query_over_allowed_keys(self, x, allowed):
        """Context ``[B, 1, d]`` of the last query over the keys ``allowed`` (``[B, L]`` bool, at
        least one per row), computed on those keys only: keys and values are projected for the
        allowed rows, and the softmax runs per sequence over them. The masked path gives a masked
        key a weight that underflows to exactly 0, so both are the same attention up to float
        rounding."""
        batch, length, hidden = x.shape
        rows = allowed.reshape(-1).nonzero().squeeze(1)  # row-major: the keys of sequence 0 first
        owner = rows // length  # the sequence each allowed key belongs to
        members = x.reshape(-1, hidden).index_select(0, rows)
        keys = self.key(members).view(-1, self.n_heads, self.head_size)
        values = self.value(members).view(-1, self.n_heads, self.head_size)
        query = self.query(x[:, -1]).view(batch, self.n_heads, self.head_size)
        scores = (query.index_select(0, owner) * keys).sum(-1) / math.sqrt(self.head_size)  # [n, heads]
        with torch.no_grad():  # a per-sequence shift: the softmax does not depend on it
            shift = scores.new_full((batch, self.n_heads), -math.inf).scatter_reduce(
                0, owner.unsqueeze(1).expand_as(scores), scores, "amax")
        weights = (scores - shift.index_select(0, owner)).exp()
        totals = weights.new_zeros(batch, self.n_heads).index_add(0, owner, weights)
        probs = self.attn_dropout(weights / totals.index_select(0, owner))
        context = values.new_zeros(batch, self.n_heads, self.head_size).index_add(
            0, owner, probs.unsqueeze(-1) * values)
        return context.view(batch, 1, hidden)

    def forward(self, x, mask, last_only=False):
        """``last_only``: queries (and the output) for the last position only. When few keys are
        allowed (short sequences in a long window) that query runs on them alone
        (:meth:`_last_query_over_allowed_keys`)."""
        queries = x[:, -1:] if last_only else x
        mask = mask[..., -1:, :] if last_only else mask
        if last_only and x.device.type == "cpu" and mask.shape[1] == 1:  # CUDA: index_add is not deterministic
            allowed = (mask[:, 0, -1, :] == 0).expand(x.shape[0], -1)  # a mask may be shared by the batch
            if allowed.any(dim=1).all() and allowed.sum() <= KEY_ROWS_WORTH_GATHERING * allowed.numel():
                context = self._last_query_over_allowed_keys(x, allowed)
                return self.layer_norm(queries + self.out_dropout(self.output(context)))
        q, k, v = self._heads(self.query(queries)), self._heads(self.key(x)), self._heads(self.value(x))
        if self.training and self.attn_dropout.p > 0:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + mask
            context = self.attn_dropout(scores.softmax(dim=-1)) @ v
        else:  # no dropout to draw: torch's fused kernel, same scale and additive mask
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        context = context.transpose(1, 2).reshape(queries.shape)
        return self.layer_norm(queries + self.out_dropout(self.output(context)))


class PositionwiseFeedForward(nn.Module):
    """Two-layer feed-forward network with residual + LN."""

    def __init__(self, hidden_size, inner_size, hidden_act, dropout, layer_norm_eps):
        super().__init__()
        self.act = activation(hidden_act)
        self.dense_in = nn.Linear(hidden_size, inner_size)
        self.dense_out = nn.Linear(inner_size, hidden_size)
        self.dropout = MaskDropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x):
        return self.layer_norm(x + self.dropout(self.dense_out(self.act(self.dense_in(x)))))


class FrequencyAttentionBlock(nn.Module):
    """One BSARec block: ``alpha * frequency branch + (1 - alpha) * attention``, then FFN."""

    def __init__(self, hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout,
                 hidden_act="gelu", layer_norm_eps=1e-12, c=3, alpha=0.9):
        super().__init__()
        self.alpha = float(alpha)
        self.frequency = FrequencyFilter(hidden_size, c, hidden_dropout, layer_norm_eps)
        self.attention = MultiHeadSelfAttention(hidden_size, n_heads, attn_dropout,
                                                hidden_dropout, layer_norm_eps)
        self.feed_forward = PositionwiseFeedForward(hidden_size, inner_size, hidden_act,
                                                    hidden_dropout, layer_norm_eps)

    def forward(self, x, mask, last_only=False):
        """``[B, L, d]``, or ``[B, 1, d]`` (the last position) with ``last_only``."""
        mixed = self.alpha * self.frequency(x, last_only) + (1.0 - self.alpha) * self.attention(x, mask, last_only)
        return self.feed_forward(mixed)


class FrequencyAttentionEncoder(nn.Module):
    """A stack of :class:`FrequencyAttentionBlock`; returns the last block's output (``[B, L, d]``,
    or ``[B, d]`` for the last position with ``last_only``)."""

    def __init__(self, n_layers=2, hidden_size=64, n_heads=2, inner_size=256,
                 hidden_dropout=0.5, attn_dropout=0.5, hidden_act="gelu",
                 layer_norm_eps=1e-12, c=3, alpha=0.9):
        super().__init__()
        self.blocks = nn.ModuleList([
            FrequencyAttentionBlock(hidden_size, n_heads, inner_size, hidden_dropout,
                                    attn_dropout, hidden_act, layer_norm_eps, c, alpha)
            for _ in range(n_layers)
        ])

    def forward(self, x, mask, last_only=False):
        for index, block in enumerate(self.blocks):
            last_block = index == len(self.blocks) - 1
            x = block(x, mask, last_only and last_block)
        return x[:, -1] if last_only else x


