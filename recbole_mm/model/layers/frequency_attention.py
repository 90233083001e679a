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
"""
import math

import torch
from torch import nn
import torch.nn.functional as F

from recbole_mm.errors import ConfigError

__all__ = [
    "FrequencyFilter", "MultiHeadSelfAttention", "PositionwiseFeedForward",
    "FrequencyAttentionBlock", "FrequencyAttentionEncoder", "attention_mask",
    "right_to_left_padding", "MaskDropout",
]

MASK_VALUE = -10000.0


class MaskDropout(nn.Module):
    """Inverted dropout drawn with ``rand >= p``; same distribution as ``nn.Dropout``.

    On CPU ``nn.Dropout`` (``bernoulli_``) is about 3x slower than a uniform draw and was
    about half of the head's forward time; on GPU the fused ``F.dropout`` is used.
    """

    def __init__(self, p):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return F.dropout(x, self.p, True)
        keep = (torch.rand_like(x) >= self.p).to(x.dtype)
        return x * (keep * (1.0 / (1.0 - self.p)))

    def extra_repr(self):
        return f"p={self.p}"


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

    def split(self, x):
        """Return ``(LFC, HFC)`` of ``x`` ``[B, L, d]`` along the sequence axis."""
        length = x.shape[1]
        spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
        keep = torch.arange(spectrum.shape[1], device=x.device) < self.kept_bins
        spectrum = spectrum * keep[None, :, None]
        low = torch.fft.irfft(spectrum, n=length, dim=1, norm="ortho")
        return low, x - low

    def forward(self, x):
        low, high = self.split(x)
        mixed = low + self.sqrt_beta.pow(2) * high
        return self.layer_norm(x + self.dropout(mixed))


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

    def forward(self, x, mask):
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + mask
        probs = self.attn_dropout(scores.softmax(dim=-1))
        context = (probs @ v).transpose(1, 2).reshape(x.shape)
        return self.layer_norm(x + self.out_dropout(self.output(context)))


class PositionwiseFeedForward(nn.Module):
    """Two-layer feed-forward network with residual + LN."""

    def __init__(self, hidden_size, inner_size, hidden_act, dropout, layer_norm_eps):
        super().__init__()
        acts = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                "swish": F.silu, "silu": F.silu}
        if hidden_act not in acts:
            raise ConfigError(f"hidden_act must be one of {sorted(acts)}, got {hidden_act!r}")
        self.act = acts[hidden_act]
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

    def forward(self, x, mask):
        mixed = self.alpha * self.frequency(x) + (1.0 - self.alpha) * self.attention(x, mask)
        return self.feed_forward(mixed)


class FrequencyAttentionEncoder(nn.Module):
    """A stack of :class:`FrequencyAttentionBlock`; returns the last block's output."""

    def __init__(self, n_layers=2, hidden_size=64, n_heads=2, inner_size=256,
                 hidden_dropout=0.5, attn_dropout=0.5, hidden_act="gelu",
                 layer_norm_eps=1e-12, c=3, alpha=0.9):
        super().__init__()
        self.blocks = nn.ModuleList([
            FrequencyAttentionBlock(hidden_size, n_heads, inner_size, hidden_dropout,
                                    attn_dropout, hidden_act, layer_norm_eps, c, alpha)
            for _ in range(n_layers)
        ])

    def forward(self, x, mask):
        for block in self.blocks:
            x = block(x, mask)
        return x


