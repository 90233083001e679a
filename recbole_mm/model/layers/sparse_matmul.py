"""``A @ X`` for a fixed sparse graph ``A`` and a dense, trainable ``X`` (shared by MuSTRec, MDSRec).

The graphs of the models (normalised user-item, item-item kNN and co-occurrence matrices) are
constants: only ``X`` needs a gradient, ``dX = A^T dY``. On CPU torch's COO product is slow in the
forward pass (it walks the coordinate list), and a CSR matrix is fast forward but builds its
transpose on every backward. :func:`graph_matmul` keeps two CSR copies per graph, ``A`` and
``A^T``, made on first use and cached per graph tensor in a weak dictionary (rebuilt if the tensor
is changed in place, e.g. by ``load_state_dict``; a moved or replaced graph is a new tensor; the
copies are never part of a deepcopy, a pickle or a checkpoint). Both passes are
then one CSR product (docs/benchmarks/mustrec.md has the timings). The result equals
``torch.sparse.mm(A, X)`` up to float summation order.

Other devices, a dense ``A`` and a graph that itself requires a gradient take the plain product.
"""
import warnings

import torch
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["graph_matmul"]

_CSR_PAIRS = WeakTensorKeyDictionary()  # graph tensor -> (its version counter, A in CSR, A^T in CSR)


def _csr_pair(adjacency):
    """``(A, A^T)`` in CSR, cached per ``adjacency`` and keyed on its in-place version counter."""
    cached = _CSR_PAIRS.get(adjacency)
    if cached is not None and cached[0] == adjacency._version:
        return cached[1], cached[2]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        coo = adjacency.to_sparse_coo().coalesce()  # a COO graph is returned as it is
        forward = coo.to_sparse_csr()
        backward = coo.t().coalesce().to_sparse_csr()
    _CSR_PAIRS[adjacency] = (adjacency._version, forward, backward)
    return forward, backward


class _ConstantGraphMatmul(torch.autograd.Function):
    """``A X`` with ``dX = A^T dY``; ``A`` gets no gradient."""

    @staticmethod
    def forward(ctx, x, forward, backward):
        ctx.backward_matrix = backward
        return torch.sparse.mm(forward, x)

    @staticmethod
    def backward(ctx, grad_output):
        return torch.sparse.mm(ctx.backward_matrix, grad_output.contiguous()), None, None


def graph_matmul(adjacency, x):
    """``adjacency @ x`` for ``adjacency`` ``[n, m]`` (sparse COO/CSR or dense) and ``x`` ``[m, d]``."""
    if adjacency.layout == torch.strided:
        return adjacency @ x
    if adjacency.device.type != "cpu" or adjacency.requires_grad or x.dtype != adjacency.dtype:
        return torch.sparse.mm(adjacency, x)
    forward, backward = _csr_pair(adjacency)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.sparse.mm(forward, x)
    return _ConstantGraphMatmul.apply(x, forward, backward)
