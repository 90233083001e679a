"""Normalisation and combination of sparse graphs (torch sparse COO in, coalesced COO out).

- :func:`sym_normalize`: ``D^-1/2 A D^-1/2`` with ``D = diag(row sums) + eps``, the
  LATTICE/FREEDOM convention. For a directed top-k graph every stored value becomes
  ``1/sqrt(r_i r_j)`` (``= 1/k`` for an exact top-k graph); rows need not sum to 1 in general.
- :func:`row_normalize`: ``D^-1 A`` (rows sum to 1; empty rows stay empty).
- :func:`weighted_sum`: ``sum_m w_m A_m`` (MuSTRec's ``alpha_v S_v + alpha_t S_t``).

Scipy sparse matrices are accepted too and converted to torch.
"""
import numpy as np
import torch

__all__ = ["sym_normalize", "row_normalize", "weighted_sum", "to_torch_sparse", "row_sums"]


def to_torch_sparse(matrix, device=None):
    """Coalesced float32 torch sparse COO from a torch sparse/dense tensor or a scipy matrix."""
    if isinstance(matrix, torch.Tensor):
        out = matrix if matrix.is_sparse else matrix.to_sparse()
        out = out.coalesce().float()
    else:  # scipy.sparse
        coo = matrix.tocoo()
        ij = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        out = torch.sparse_coo_tensor(ij, torch.from_numpy(coo.data.astype(np.float32)),
                                      coo.shape, check_invariants=False).coalesce()
    return out.to(device) if device is not None else out


def row_sums(matrix):
    """Dense vector of row sums of a sparse matrix."""
    matrix = to_torch_sparse(matrix)
    sums = torch.zeros(matrix.shape[0], dtype=torch.float32, device=matrix.device)
    return sums.index_add_(0, matrix.indices()[0], matrix.values())


def sym_normalize(matrix, eps=1e-7):
    """``D^-1/2 A D^-1/2`` with ``D`` the row sums plus ``eps`` (square matrices only)."""
    matrix = to_torch_sparse(matrix)
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"sym_normalize needs a square matrix, got {tuple(matrix.shape)}")
    inv_sqrt = (row_sums(matrix) + eps).pow(-0.5)
    i, j = matrix.indices()
    values = matrix.values() * inv_sqrt[i] * inv_sqrt[j]
    return torch.sparse_coo_tensor(matrix.indices(), values, matrix.shape,
                                   check_invariants=False).coalesce()


def row_normalize(matrix):
    """``D^-1 A``: each non-empty row sums to 1; empty rows stay empty."""
    matrix = to_torch_sparse(matrix)
    sums = row_sums(matrix)
    inv = torch.where(sums != 0, 1.0 / sums, torch.zeros_like(sums))
    values = matrix.values() * inv[matrix.indices()[0]]
    return torch.sparse_coo_tensor(matrix.indices(), values, matrix.shape,
                                   check_invariants=False).coalesce()


def weighted_sum(matrices, weights):
    """``sum_m weights[m] * matrices[m]``; ``None`` entries (absent modality) are skipped."""
    if len(matrices) != len(weights):
        raise ValueError(f"weighted_sum: {len(matrices)} matrices but {len(weights)} weights")
    pairs = [(to_torch_sparse(m), float(w)) for m, w in zip(matrices, weights) if m is not None]
    if not pairs:
        raise ValueError("weighted_sum: no matrices given")
    shape = pairs[0][0].shape
    for m, _ in pairs:
        if m.shape != shape:
            raise ValueError(f"weighted_sum: shapes differ, {tuple(shape)} vs {tuple(m.shape)}")
    indices = torch.cat([m.indices() for m, _ in pairs], dim=1)
    values = torch.cat([m.values() * w for m, w in pairs])
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()
