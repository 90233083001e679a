"""Inverted dropout with a cheap CPU mask (shared by MuSTRec's head and MDSRec's towers).

``nn.Dropout`` draws its CPU mask with ``bernoulli_``: about 25 ms for a ``512 x 50 x 64`` tensor
on this project's CPUs, which made dropout about 30 % of an MDSRec step and half of MuSTRec's head
forward pass. :func:`keep_mask` builds the mask from random 16-bit integers, four per 64-bit draw
of torch's generator. :class:`MaskDropout` applies it, and on GPU falls back to the fused
``F.dropout``. :func:`use_mask_dropout` swaps the ``nn.Dropout`` modules of a built module (e.g.
RecBole's ``TransformerEncoder``) for it. The distribution of every mask is that of
``nn.Dropout``, up to ``p`` being rounded to a multiple of 1/65536; the random stream differs.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mm.errors import ConfigError

__all__ = ["keep_mask", "MaskDropout", "use_mask_dropout"]

DROPOUT_LEVELS = 65536  # a mask element is one random 16-bit integer


def keep_mask(shape, p, dtype=torch.float32, device=None):
    """Inverted-dropout multiplier of ``shape``: ``1 / q`` where an element is kept, else 0.

    Each element reads one uniform 16-bit integer ``r`` (four come from one 64-bit draw of the
    generator) and is kept when ``r >= t``, ``t = round(p * 65536)``: kept with probability
    ``q = 1 - t / 65536`` (exactly ``1 - p`` for ``p`` a multiple of 1/65536, 0.5 among them,
    otherwise within 8e-6 of it; ``t = 65536`` drops everything). Scaling by ``1 / q`` keeps the expectation exact. On this
    project's CPUs mask and multiply take about half the time of a mask from ``rand() >= p``
    (one 32-bit draw and a float per element) and a quarter of ``F.dropout``
    (docs/benchmarks/mustrec.md).
    """
    dropped = round(p * DROPOUT_LEVELS)
    if dropped >= DROPOUT_LEVELS:  # p within 1/131072 of 1: drop everything, as nn.Dropout(1.0) does
        return torch.zeros(shape, dtype=dtype, device=device)
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    levels = words.view(torch.int16)[:count].view(shape)  # uniform on [-32768, 32767]
    keep_probability = 1.0 - dropped / DROPOUT_LEVELS
    return (levels >= dropped - DROPOUT_LEVELS // 2).to(dtype).mul_(1.0 / keep_probability)


class MaskDropout(nn.Module):
    """``nn.Dropout`` with the mask of :func:`keep_mask` on CPU; ``F.dropout`` on other devices."""

    def __init__(self, p):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return x * keep_mask(x.shape, self.p, x.dtype, x.device)

    def extra_repr(self):
        return f"p={self.p}"


def use_mask_dropout(module):
    """Replace every ``nn.Dropout`` inside ``module`` by a :class:`MaskDropout` of the same rate
    (construction time; returns the number replaced)."""
    replaced = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, MaskDropout(child.p))
                replaced += 1
    return replaced
