"""Shared graph toolkit: every graph a model uses is built here, from the training split only.

- :mod:`.knn`: chunked exact (optionally approximate) top-k cosine, sparse kNN graphs
- :mod:`.normalize`: symmetric / row normalisation, weighted sum of modality graphs
- :mod:`.interaction`: user-item bipartite adjacency, FREEDOM degree-sensitive pruning
- :mod:`.cooccurrence`: item co-occurrence from training sequences
- :mod:`.codes`: seeded k-means and modality codes
- :mod:`.cache`: content-keyed on-disk cache with atomic writes
"""
from .cache import cached_tensor, fingerprint
from .codes import assign_codes, kmeans, modality_codes
from .cooccurrence import cooccurrence_matrix
from .interaction import DegreePruner, user_item_adjacency
from .knn import knn_graph, topk_cosine
from .normalize import row_normalize, sym_normalize, to_torch_sparse, weighted_sum

__all__ = [
    "cached_tensor", "fingerprint", "assign_codes", "kmeans", "modality_codes",
    "cooccurrence_matrix", "DegreePruner", "user_item_adjacency", "knn_graph", "topk_cosine",
    "row_normalize", "sym_normalize", "to_torch_sparse", "weighted_sum",
]
