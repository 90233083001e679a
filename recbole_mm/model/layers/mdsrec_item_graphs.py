"""Item-side precomputation of MDSRec (used by MDSRec only), built once from the training split.

1. O: co-occurrence of the training sequences (Eq. 1-2), ``graphs.cooccurrence``; normalised
   to Ō (``cooc_norm``).
2. Ē^m = mu_m Ō E^m + E^m (Eq. 3), computed with a sparse-dense product (never N x N dense).
3. Â^m: top-H cosine neighbours of Ē^m (Eq. 4-5), ``graphs.knn`` (chunked exact, or the
   optional low-rank candidate mode), normalised (``graph_norm``) with ``graphs.normalize``.
4. C^m: k-means of the raw (or injected) features (Eq. 10), ``graphs.codes``.

Everything that is slow to build (O, neighbour lists, cluster labels) goes through
``graphs.cache.cached_tensor`` keyed on the dataset fingerprint (features + the time-ordered
training sequences, so reordered timestamps rebuild O) and on every setting that changes it.
"""
import warnings

import torch

from recbole_mm.errors import ConfigError
from recbole_mm.graphs.cache import cached_tensor
from recbole_mm.graphs.codes import kmeans
from recbole_mm.graphs.cooccurrence import cooccurrence_matrix, normalize_scipy
from recbole_mm.graphs.knn import knn_graph
from recbole_mm.graphs.normalize import row_normalize, sym_normalize, to_torch_sparse


def check_choice(config, key, choices):
    value = config[key]
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}.")
    return value


def inject_behaviour(cooc_norm, features, mu):
    """Ē = mu Ō E + E (Eq. 3) for fixed features (Ō torch sparse), float32 [N, d_m]."""
    features = features.float()
    if mu == 0 or cooc_norm._nnz() == 0:
        return features.clone()
    return features + mu * torch.sparse.mm(cooc_norm, features)


def modal_graph(features, mask, n_neighbours, knn_self, approx_dim=None, seed=0, backend="torch"):
    """Binary top-H graph Â^m (Eq. 5) as coalesced sparse COO [N, N] (directed, not symmetrised).

    Rows of items without this modality keep a self loop (their Ê^m row is their own ID
    embedding); PAD's row is empty. ``n_neighbours`` = 0 gives an empty graph."""
    n = features.shape[0]
    if n_neighbours == 0:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n, n),
                                       check_invariants=True).coalesce()
    extra = {"approx_dim": int(approx_dim), "seed": seed} if approx_dim else {}
    if backend != "torch":
        extra.update(backend=backend, seed=seed)
    return knn_graph(features, n_neighbours, include_self=knn_self, valid_mask=mask,
                     invalid_rows="self_loop", pad_index=0, **extra)


def normalize_graph(graph, graph_norm):
    """``sym``: 1/sqrt(r_i r_j) (= 1/H for an exact top-H graph); ``row``: 1/r_i; ``none``: binary."""
    if graph_norm == "sym":
        return sym_normalize(graph)
    if graph_norm == "row":
        return row_normalize(graph)
    return graph.coalesce()


def centre_labels(features, mask, n_centers, n_iters, seed, backend="torch"):
    """k-means (Euclidean, k-means++ from ``seed``) cluster of every item with the feature:
    [N] long, -1 for PAD and items without the modality (Eq. 10)."""
    _, labels = kmeans(features[mask].float(), n_centers, seed=seed, iters=n_iters, backend=backend)
    out = torch.full((features.shape[0],), -1, dtype=torch.long)
    out[mask] = labels
    return out


def build_item_side(config, dataset, modalities):
    """Everything MDSRec precomputes, as CPU tensors: cooc_indices/values (Ō), graphs {m:
    (indices, values)}, labels {m: [N]}, features/masks {m} (only w/o MRGC), n_centers {m}."""
    n_items = dataset.item_num
    seed = int(config["seed"])
    cooc_weight = check_choice(config, "cooc_weight", ("inverse_distance", "count"))
    cooc_norm = check_choice(config, "cooc_norm", ("row", "sym", "none"))
    knn_self = check_choice(config, "knn_self", ("include", "exclude", "add"))
    graph_norm = check_choice(config, "graph_norm", ("sym", "row", "none"))
    kmeans_on = check_choice(config, "kmeans_on", ("raw", "injected"))
    window = config["cooc_window"]
    n_neighbours = int(config["knn_k"])
    if n_neighbours < 0:
        raise ConfigError(f"config key 'knn_k' (H) must be >= 0, got {n_neighbours}.")
    base_key = {"fingerprint": dataset.fingerprint, "n_items": n_items}
    knn_backend, kmeans_backend = (config[key] if key in config and config[key] else "torch"
                                   for key in ("knn_backend", "kmeans_backend"))
    cache_dir = dataset.graph_cache_dir

    cooc_key = dict(base_key, what="mdsrec-cooccurrence", weight=cooc_weight, window=window)

    def build_cooc():
        return cooccurrence_matrix(dataset.train_sequences(), n_items, mode="all", weight=cooc_weight,
                                   window=window, normalize="none")

    cooc = cached_tensor(cache_dir, "mdsrec_cooc", cooc_key, build_cooc)  # O, scipy CSR
    cooc_hat = to_torch_sparse(normalize_scipy(cooc, cooc_norm))  # Ō
    side = {"cooc_indices": cooc_hat.indices(), "cooc_values": cooc_hat.values().float(),
            "graphs": {}, "labels": {}, "features": {}, "masks": {}, "n_centers": {}}

    use_cre = bool(config["use_cre_graph"])
    mu_modal = float(config["mu_modal"])
    for m in modalities:
        features = dataset.item_features[m].float()
        mask = dataset.item_feature_mask[m].bool().clone()
        mask[0] = False
        if not mask.any():
            raise ConfigError(f"modality '{m}' has no item with a feature; drop it from config key 'modalities'.")
        if config["use_mrgc"]:
            graph_key = dict(base_key, what="mdsrec-graph", modality=m, H=n_neighbours, knn_self=knn_self,
                             approx=config["knn_approx_dim"], seed=seed,
                             cre=(mu_modal, cooc_weight, window, cooc_norm) if use_cre else None)
            if knn_backend != "torch":  # the default keeps the keys of existing caches
                graph_key["backend"] = knn_backend

            def build_graph(m=m, features=features, mask=mask):
                source = inject_behaviour(cooc_hat, features, mu_modal) if use_cre else features
                return modal_graph(source, mask, n_neighbours, knn_self, config["knn_approx_dim"], seed,
                                   knn_backend).indices()

            binary = cached_tensor(cache_dir, f"mdsrec_graph_{m}", graph_key, build_graph)
            graph = torch.sparse_coo_tensor(binary, torch.ones(binary.shape[1]), (n_items, n_items),
                                            check_invariants=True).coalesce()
            graph = normalize_graph(graph, graph_norm)
            side["graphs"][m] = (graph.indices(), graph.values().float())
        else:
            side["features"][m] = features
            side["masks"][m] = mask
        if config["use_ica"]:
            k = int(config["n_centers"])
            n_real = int(mask.sum())
            if k < 1:
                raise ConfigError(f"config key 'n_centers' must be >= 1, got {k}.")
            if k > n_real:
                warnings.warn(f"MDSRec: n_centers={k} exceeds the {n_real} items with modality '{m}'; clamped.")
                k = n_real
            label_key = dict(base_key, what="mdsrec-kmeans", modality=m, k=k, iters=int(config["kmeans_iters"]),
                             on=kmeans_on, seed=seed,
                             cre=(mu_modal, cooc_weight, window, cooc_norm) if kmeans_on == "injected" else None)
            if kmeans_backend != "torch":
                label_key["backend"] = kmeans_backend

            def build_labels(m=m, features=features, mask=mask, k=k):
                source = inject_behaviour(cooc_hat, features, mu_modal) if kmeans_on == "injected" else features
                return {"labels": centre_labels(source, mask, k, int(config["kmeans_iters"]), seed, kmeans_backend)}

            side["labels"][m] = cached_tensor(cache_dir, f"mdsrec_kmeans_{m}", label_key, build_labels)["labels"]
            side["n_centers"][m] = k
    return side
