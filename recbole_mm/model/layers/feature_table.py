"""Per-item raw feature tables (row = internal item id), frozen or trainable.

A trainable table (MuSTRec/FREEDOM fine-tune the raw 4,096-d image features) gets a dense
gradient every step, which autograd allocates afresh: on CPU the page faults of that allocation
(115 MB for Baby's 7,050 x 4,096 table) cost more than the rest of the table's backward.
On CPU, :class:`FeatureTable` hands autograd the previous step's gradient tensor instead, zeroed
and refilled, so after the first step no step allocates it; the gradient equals
``nn.Embedding``'s, bit for bit. The old tensor is reused only when nothing else holds it: if it
is still attached to the parameter (gradient accumulation without ``zero_grad``), kept by other
code, or on another device or dtype, a fresh tensor is used and nothing is overwritten. On other
devices the lookup is plain ``F.embedding`` (``index_add_`` is not deterministic on CUDA).
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mm.errors import ConfigError

MEMORY_SHARE = 0.8  # tables (+ gradient and Adam moments) may take at most this share of the device's memory


def device_memory_bytes(device):
    """Total memory of ``device``: the GPU's, or the machine's physical memory on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_tables_fit(shapes, trainable, device, model):
    """Fail before allocating when the feature tables cannot fit: each float32 table, plus its
    gradient and Adam's two moments when trainable, against ``MEMORY_SHARE`` of the device's
    memory. The error names the setting that shrinks the need (``train_raw_features: false``)."""
    need = sum(rows * dim for rows, dim in shapes) * 4 * (4 if trainable else 1)
    have = device_memory_bytes(device)
    if need > MEMORY_SHARE * have:
        fix = ("set train_raw_features: false (frozen tables: a quarter of the memory)" if trainable
               else "use fewer or smaller modalities (config key 'modalities') or a larger machine")
        raise ConfigError(f"{model}: the raw feature tables {[tuple(s) for s in shapes]} need about "
                          f"{need / 2**30:.1f} GiB for training on {torch.device(device).type}, more than "
                          f"{MEMORY_SHARE:.0%} of its {have / 2**30:.1f} GiB. Fix: {fix}.")


class _GatherRows(torch.autograd.Function):
    """``weight[index]`` whose backward writes into the table's recycled gradient buffer."""

    @staticmethod
    def forward(ctx, weight, index, table):
        ctx.save_for_backward(index)
        ctx.table = table
        return weight.index_select(0, index)

    @staticmethod
    def backward(ctx, grad_rows):
        (index,) = ctx.saved_tensors
        grad_weight = ctx.table.take_gradient_buffer()
        grad_weight.index_add_(0, index, grad_rows)
        return grad_weight, None, None


class FeatureTable(nn.Module):
    """Lookup of raw item features; ``trainable=False`` keeps them fixed (no gradient at all)."""

    def __init__(self, features, trainable=True):
        super().__init__()
        self.weight = nn.Parameter(features.clone(), requires_grad=trainable)
        self._spare_gradient = None
        if trainable:
            self.weight.register_post_accumulate_grad_hook(self._keep_gradient)

    def _keep_gradient(self, weight):
        self._spare_gradient = weight.grad

    def take_gradient_buffer(self):
        """A zeroed tensor shaped like the table: last step's gradient if it is free, else new."""
        buffer, self._spare_gradient = self._spare_gradient, None  # drop our reference: autograd may keep it
        reusable = (
            buffer is not None
            and buffer is not self.weight.grad
            and sys.getrefcount(buffer) <= 2  # only this frame's name and getrefcount's argument
            and (buffer.shape, buffer.dtype, buffer.device) == (self.weight.shape, self.weight.dtype,
                                                               self.weight.device)
        )
        return buffer.zero_() if reusable else torch.zeros_like(self.weight)

    def forward(self, index):
        if self.weight.requires_grad and torch.is_grad_enabled() and self.weight.device.type == "cpu":
            return _GatherRows.apply(self.weight, index.reshape(-1), self).view(*index.shape, -1)
        return F.embedding(index, self.weight)
