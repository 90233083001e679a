"""MMSR modality codes (Hu et al., CIKM 2023, §4.1 "Node transformation and compositions").

item feature -> z-score (statistics of the fit items) -> linear autoencoder (or PCA) to d dims
-> k-means with c centres (``recbole_mm.graphs.codes``) -> every item with the feature linked to
its top-k centres (cosine by default).  The centres, min-max scaled into +-1/sqrt(d) as in the
official code, initialise the trainable code embeddings.

``code_num: 0`` (the "no modality codes" point of Fig. 5): every item modality is a node of its
own; its embedding is a learned Linear projection of the item's scaled AE feature
(:class:`ItemModalityEmbedding`).

Deviations from the official code (B9 in docs/models/MMSR.md): the autoencoder is linear (no
Sigmoid), its best state is copied (not a live reference), and everything is fitted on the
training items only by default.  Results are cached on disk with ``recbole_mm.graphs.cache``.
"""
import copy
import math

import torch
from torch import nn

from recbole_mm.errors import ConfigError
from recbole_mm.graphs.cache import cached_tensor
from recbole_mm.graphs.codes import modality_codes

CODE_VERSION = 1


def linear_autoencoder(features, fit_mask, dim, epochs, lr, seed, batch_size=256):
    """Train Linear(D, dim) + Linear(dim, D) with MSE on the fit rows; return all rows encoded."""
    generator = torch.Generator().manual_seed(int(seed))
    fit_rows = features[fit_mask]
    # skip_init: no draw from the global RNG, so a cache miss leaves the model's own init unchanged
    encoder = nn.utils.skip_init(nn.Linear, features.shape[1], dim)
    decoder = nn.utils.skip_init(nn.Linear, dim, features.shape[1])
    for layer in (encoder, decoder):  # seeded init independent of the global RNG
        bound = 1.0 / math.sqrt(layer.in_features)
        with torch.no_grad():
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
            layer.bias.copy_(torch.rand(layer.bias.shape, generator=generator) * 2 * bound - bound)
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    best_loss, best_state = float("inf"), copy.deepcopy(encoder.state_dict())
    with torch.enable_grad():
        for _ in range(int(epochs)):
            order = torch.randperm(fit_rows.shape[0], generator=generator)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = fit_rows[order[start:start + batch_size]]
                loss = ((decoder(encoder(batch)) - batch) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            if total < best_loss:
                best_loss, best_state = total, copy.deepcopy(encoder.state_dict())
    encoder.load_state_dict(best_state)
    with torch.no_grad():
        return encoder(features)


def pca_reduce(features, fit_mask, dim):
    """Project on the top principal directions of the fit rows (zero-padded to ``dim``).

    Exact PCA in float64: the eigenvectors of the ``d x d`` scatter matrix when there are more
    rows than dimensions (7,050 x 4,096: 19 s instead of 50 s for the SVD of the rows, one
    thread), else the SVD of the rows."""
    fit_rows = features[fit_mask]
    centred = (fit_rows - fit_rows.mean(0)).double()
    if centred.shape[0] > centred.shape[1]:
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        vh = vectors.flip(1).T
    else:
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:dim].float()
    sign = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * torch.where(sign == 0, torch.ones_like(sign), sign)  # deterministic signs
    reduced = (features - fit_rows.mean(0)) @ components.t()
    if reduced.shape[1] < dim:
        reduced = torch.cat([reduced, reduced.new_zeros(reduced.shape[0], dim - reduced.shape[1])], dim=1)
    return reduced


def scale_centres(centres, dim, reference=None):
    """Min-max scale all entries into [-1/sqrt(d), 1/sqrt(d)] (official code initialisation).

    ``reference`` (default: ``centres``) gives the minimum and maximum.
    """
    bound = 1.0 / math.sqrt(dim)
    reference = centres if reference is None else reference
    low, high = reference.min(), reference.max()
    if high - low <= 0:
        return torch.zeros_like(centres)
    return (centres - low) / (high - low) * 2 * bound - bound


def reduce_modality_features(features, valid, fit_mask, dim, reduce="ae", ae_epochs=500, ae_lr=1e-3,
                             seed=2023):
    """The "AE feature" of every item: z-score (fit-row statistics), then linear AE (or PCA) to ``dim``."""
    x = features.float()
    mean, std = x[fit_mask].mean(0), x[fit_mask].std(0).clamp(min=1e-8)
    z = torch.where(valid[:, None], (x - mean) / std, torch.zeros_like(x))
    if reduce == "ae":
        reduced = linear_autoencoder(z, fit_mask, dim, ae_epochs, ae_lr, seed)
    else:
        reduced = pca_reduce(z, fit_mask, dim)
    # a reduced row may be exactly zero by chance; keep presence from ``valid`` only
    return torch.where(valid[:, None] & (reduced.norm(dim=1, keepdim=True) == 0),
                       torch.full_like(reduced, 1e-12), reduced)


def fit_modality_codes(features, valid, fit_mask, dim, n_codes, top_k, reduce="ae", assign="cosine",
                       ae_epochs=500, ae_lr=1e-3, seed=2023, cache_dir=None, cache_key=None):
    """Codes of one modality.

    Args:
        features: float [n_items, D]; valid: bool [n_items] items that have the feature;
        fit_mask: bool [n_items] items the reduction and k-means are fitted on (subset of valid).
        n_codes: c >= 1, or 0 for one node per item modality (then ``top_k`` is ignored).
    Returns:
        (centres float [c, dim] scaled for embedding init, item_codes long [n_items, k], -1 = none).
        With ``n_codes == 0`` every item is its own code: (scaled AE features [n_items, dim],
        item ids [n_items, 1], -1 where the feature is missing).
    """
    if reduce not in ("ae", "pca"):
        raise ConfigError(f"code_reduce must be 'ae' or 'pca', got {reduce!r}")
    fit_mask = fit_mask & valid
    if int(fit_mask.sum()) < max(n_codes, 1):
        raise ConfigError(f"only {int(fit_mask.sum())} items can fit {n_codes} codes. Fix: lower code_num "
                          "or set code_fit_items: all.")

    def build():
        reduced = reduce_modality_features(features, valid, fit_mask, dim, reduce, ae_epochs, ae_lr, seed)
        if n_codes == 0:  # Fig. 5 ablation without codes: each item modality is a node fed by its AE feature
            item_ids = torch.arange(len(valid), device=valid.device)
            return {"centres": scale_centres(reduced, dim, reference=reduced[fit_mask]),
                    "codes": torch.where(valid, item_ids, torch.full_like(item_ids, -1))[:, None]}
        centres, codes, _ = modality_codes(reduced, n_codes, top_k, seed, fit_mask=fit_mask,
                                           valid_mask=valid, assign=assign)
        return {"centres": scale_centres(centres, dim), "codes": codes}

    if cache_dir is None or cache_key is None:
        result = build()
    else:
        key = dict(cache_key, version=CODE_VERSION, dim=dim, n_codes=n_codes, top_k=top_k, reduce=reduce,
                   assign=assign, ae_epochs=ae_epochs, ae_lr=ae_lr, seed=seed, fit=fit_mask, valid=valid)
        result = cached_tensor(cache_dir, "mmsr_codes", key, build)
    return result["centres"], result["codes"]


class ItemModalityEmbedding(nn.Module):
    """Node table of the ``code_num: 0`` ablation (paper Fig. 5, no modality codes): item id -> W e_ae(item).

    ``ae_features`` [n_items, d] holds the scaled AE features returned by :func:`fit_modality_codes`
    (a buffer, filled by the model); the projection ``W`` (no bias: the type embedding carries
    the per-modality offset) is learned.
    """

    def __init__(self, n_items, dim):
        super().__init__()
        self.register_buffer("ae_features", torch.zeros(n_items, dim))
        self.projection = nn.Linear(dim, dim, bias=False)

    def forward(self, item_ids):
        return self.projection(self.ae_features[item_ids])
