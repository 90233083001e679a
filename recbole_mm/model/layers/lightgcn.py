"""LightGCN propagation (He et al., SIGIR 2020), shared by graph-based models.

Given a (normalised) adjacency ``A`` and ego embeddings ``h(0)`` the layers are
``h(l+1) = A h(l)``: no weights, no nonlinearity. The output combines layers ``0..L``:

- ``"mean"``: mean of layers 0..L, ego layer included (LightGCN, FREEDOM, MuSTRec official);
- ``"sum"``: their sum;
- ``"last"``: layer L only (a literal reading of MuSTRec's Eq 8).

``A`` may be a torch sparse (COO/CSR) or dense matrix (products by :func:`graph_matmul`).
"""
import torch
from torch import nn

from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.sparse_matmul import graph_matmul

__all__ = ["lightgcn_propagate", "LightGCN", "COMBINATIONS"]

COMBINATIONS = ("mean", "sum", "last")


def lightgcn_propagate(adjacency, ego, n_layers, combine="mean"):
    """Propagate ``ego`` ``[n, d]`` ``n_layers`` times over ``adjacency`` ``[n, n]``."""
    if combine not in COMBINATIONS:
        raise ConfigError(f"combine must be one of {COMBINATIONS}, got {combine!r}")
    if n_layers < 0:
        raise ConfigError(f"n_layers must be >= 0, got {n_layers}")
    layers = [ego]
    x = ego
    for _ in range(n_layers):
        x = graph_matmul(adjacency, x)
        layers.append(x)
    if combine == "last":
        return layers[-1]
    stacked = torch.stack(layers, dim=0)
    return stacked.mean(dim=0) if combine == "mean" else stacked.sum(dim=0)


class LightGCN(nn.Module):
    """Module wrapper of :func:`lightgcn_propagate` (no parameters)."""

    def __init__(self, n_layers=2, combine="mean"):
        super().__init__()
        if combine not in COMBINATIONS:
            raise ConfigError(f"combine must be one of {COMBINATIONS}, got {combine!r}")
        self.n_layers = int(n_layers)
        self.combine = combine

    def forward(self, adjacency, ego):
        return lightgcn_propagate(adjacency, ego, self.n_layers, self.combine)
