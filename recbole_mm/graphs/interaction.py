"""User-item bipartite graph from the training split, and FREEDOM's degree-sensitive pruning.

Input is always ``R``: the ``[U, I]`` training interaction matrix (scipy CSR, 1.0 per seen
pair, ``dataset.train_interaction_matrix()``); values are binarised, so repeats count once.
Node order of the ``(U+I) x (U+I)`` adjacency: users ``0..U-1``, then items ``U..U+I-1``.

Full graph (evaluation): ``A = D^-1/2 [[0, R], [R^T, 0]] D^-1/2``, degrees = edge counts
``+ 1e-7``, no self loops (:func:`user_item_adjacency`).

Pruned graph (training, MuSTRec = FREEDOM ``pre_epoch_processing``; :class:`DegreePruner`):
every training edge ``e = (u, i)`` gets ``w_e = 1/sqrt((d_u + eps)(d_i + eps))`` from the full
``R``; each epoch draws ``m = floor(E * keep_ratio)`` distinct edges with
``torch.multinomial(w, m, replacement=False)`` from a seeded ``torch.Generator``; the kept
edges are renormalised with the *kept* graph's degrees (+1e-7) and mirrored into a symmetric
matrix. Edges between low-degree nodes are kept more often.
"""
import math

import numpy as np
import scipy.sparse as sp
import torch

from recbole_mm.errors import ConfigError

__all__ = ["user_item_adjacency", "DegreePruner", "edge_list"]

DEGREE_EPS = 1e-7


def edge_list(inter_csr):
    """``(users, items)`` int64 arrays of the distinct non-zero entries of ``R``, row-major."""
    if not sp.issparse(inter_csr):
        raise TypeError(f"expected a scipy sparse [U, I] matrix, got {type(inter_csr).__name__}")
    csr = sp.csr_matrix(inter_csr, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    coo = csr.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64)


def _bipartite_normalized(users, items, n_users, n_items, device=None):
    """Symmetric normalised adjacency of the bipartite graph given by edge arrays (torch)."""
    users = torch.as_tensor(users, dtype=torch.long, device=device)
    items = torch.as_tensor(items, dtype=torch.long, device=device)
    deg_u = torch.bincount(users, minlength=n_users).float() + DEGREE_EPS
    deg_i = torch.bincount(items, minlength=n_items).float() + DEGREE_EPS
    values = deg_u[users].pow(-0.5) * deg_i[items].pow(-0.5)
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    size = n_users + n_items
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.cat([values, values]),
                                   (size, size), check_invariants=False).coalesce()


def user_item_adjacency(inter_csr, device=None):
    """Normalised symmetric ``(U+I) x (U+I)`` adjacency of the training interactions."""
    n_users, n_items = inter_csr.shape
    users, items = edge_list(inter_csr)
    return _bipartite_normalized(users, items, n_users, n_items, device)


class DegreePruner:
    """Per-epoch degree-sensitive edge sampling of the user-item graph (FREEDOM scheme).

    Args:
        inter_csr: ``[U, I]`` scipy training matrix.
        keep_ratio: fraction ``rho`` of edges kept each epoch (MuSTRec ``ui_keep_ratio``).
        seed: seed of the private ``torch.Generator`` (reproducible sequence of epochs).
        device: device of the returned tensors.

    ``sample()`` returns the next epoch's pruned normalised adjacency; ``sample_edges()`` only
    the kept edge positions (into ``users``/``items``); ``full()`` the unpruned graph.
    """

    def __init__(self, inter_csr, keep_ratio, seed=0, device=None):
        if not 0.0 < float(keep_ratio) <= 1.0:
            raise ConfigError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        self.n_users, self.n_items = inter_csr.shape
        users, items = edge_list(inter_csr)
        self.device = device
        self.users = torch.from_numpy(users)
        self.items = torch.from_numpy(items)
        self.n_edges = int(users.shape[0])
        self.keep_ratio = float(keep_ratio)
        self.n_keep = int(math.floor(self.n_edges * self.keep_ratio + 1e-9))
        deg_u = torch.bincount(self.users, minlength=self.n_users).double() + DEGREE_EPS
        deg_i = torch.bincount(self.items, minlength=self.n_items).double() + DEGREE_EPS
        self.edge_weights = (deg_u[self.users] * deg_i[self.items]).pow(-0.5).float()
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def sample_edges(self):
        """Positions of the ``floor(E * keep_ratio)`` edges kept this epoch (sorted)."""
        if self.n_keep == 0:
            return torch.zeros(0, dtype=torch.long)
        if self.n_keep >= self.n_edges:
            return torch.arange(self.n_edges)
        picked = torch.multinomial(self.edge_weights, self.n_keep, replacement=False,
                                   generator=self.generator)
        return torch.sort(picked).values

    def sample(self):
        """Next epoch's pruned adjacency, renormalised with the kept degrees, symmetric."""
        kept = self.sample_edges()
        return _bipartite_normalized(self.users[kept], self.items[kept], self.n_users,
                                     self.n_items, self.device)

    def full(self):
        """The unpruned normalised adjacency (used for evaluation)."""
        return _bipartite_normalized(self.users, self.items, self.n_users, self.n_items,
                                     self.device)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
