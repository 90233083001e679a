"""Seeded k-means and modality codes (MMSR's item -> top-k centre links; MDSRec's centres).

:func:`kmeans` (used by MMSR and MDSRec; docs/models/MDSRec.md, Eq. 10): Euclidean Lloyd
iterations on float32 rows, k-means++ initialisation from a private ``torch.Generator(seed)``,
at most ``iters`` steps, stop when the relative decrease of the inertia is below ``tol``; an
empty cluster is re-seeded with the point farthest from its centre (lowest index on ties).
Distances are computed in row chunks, so memory is ``O(chunk x c)``. Same inputs + seed = same
output.

:func:`modality_codes` (docs/models/MMSR.md, §4.1): fit k-means on the rows selected by
``fit_mask`` (the training items that have the modality), then link **every** valid item to its
``top_k`` nearest centres by cosine (``assign='cosine'``) or Euclidean distance (``'euclidean'``), ties
to the lower centre id. Invalid items (mask False or a zero row; PAD) get code ``-1``.
"""
import torch

from recbole_mm.errors import ConfigError
from recbole_mm.graphs.faiss_support import import_faiss

__all__ = ["kmeans", "modality_codes", "assign_codes"]


def _sq_distances(x, centres, chunk=8192, x_sq=None):
    """``[N, c]`` squared Euclidean distances, computed in row chunks (clamped at 0).
    ``x_sq`` (the rows' squared norms) may be passed to avoid recomputing them."""
    c_sq = (centres * centres).sum(1)
    if x_sq is None:
        x_sq = (x * x).sum(1)
    out = torch.empty(x.shape[0], centres.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk):
        d = torch.addmm(x_sq[s:s + chunk].unsqueeze(1) + c_sq, x[s:s + chunk], centres.T,
                        alpha=-2.0)
        out[s:s + chunk] = d.clamp_min_(0.0)
    return out


def _kmeans_pp(x, n_clusters, gen):
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first]]
    closest = _sq_distances(x, x[first:first + 1], x_sq=x_sq).squeeze(1)
    for _ in range(1, n_clusters):
        total = float(closest.sum())
        if total <= 0:  # all remaining points coincide with a centre: take the lowest index
            idx = int(torch.argmax((closest >= 0).to(torch.int8)))
        else:
            probs = (closest / total).double().cpu()
            idx = int(torch.multinomial(probs, 1, generator=gen))
        centres.append(x[idx])
        closest = torch.minimum(closest, _sq_distances(x, x[idx:idx + 1], x_sq=x_sq).squeeze(1))
    return torch.stack(centres)


def kmeans(x, n_clusters, seed=0, iters=100, tol=1e-4, backend="torch"):
    """Seeded k-means. Returns ``(centres FloatTensor[c, d], labels LongTensor[N])``.

    ``backend='faiss'`` (optional ``faiss-cpu``) runs ``faiss.Kmeans`` with the same seed and
    number of iterations (its own initialisation and sampling, so other centres than ours);
    labels are then the nearest centre of every row, as here."""
    x = x.float()
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ConfigError(f"kmeans: n_clusters={n_clusters} must be in [1, {n}] (number of rows)")
    if backend == "faiss":
        faiss = import_faiss("kmeans_backend")
        faiss.omp_set_num_threads(torch.get_num_threads())
        fitted = faiss.Kmeans(x.shape[1], int(n_clusters), niter=max(1, int(iters)), seed=int(seed),
                              max_points_per_centroid=max(256, n // n_clusters + 1))
        fitted.train(x.cpu().contiguous().numpy())
        centres = torch.from_numpy(fitted.centroids).to(x.device)
        return centres, _sq_distances(x, centres).argmin(1)
    if backend != "torch":
        raise ConfigError(f"kmeans backend must be 'torch' or 'faiss', got {backend!r}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    centres = _kmeans_pp(x, n_clusters, gen)
    previous = None
    x_sq = (x * x).sum(1)
    for _ in range(max(1, int(iters))):
        dist = _sq_distances(x, centres, x_sq=x_sq)
        best, labels = dist.min(1)
        inertia = float(best.sum())
        counts = torch.bincount(labels, minlength=n_clusters)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        new = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(torch.argmax(best))
            new[empty] = x[far]
            best[far] = -1.0  # never pick the same point twice
        centres = new
        if previous is not None and previous - inertia <= tol * max(previous, 1e-12):
            break
        previous = inertia
    labels = _sq_distances(x, centres, x_sq=x_sq).argmin(1)
    return centres, labels


def assign_codes(features, centres, top_k, assign="cosine", valid=None):
    """Top-k centres of every row: ``(indices LongTensor[N, k], scores FloatTensor[N, k])``.

    Scores are cosine similarities (``'cosine'``) or negative Euclidean distances; invalid rows
    hold ``-1`` / ``0``. Ties go to the lower centre id.
    """
    if assign == "cosine":
        xn = features.float() / features.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
        cn = centres / centres.norm(dim=1, keepdim=True).clamp_min(1e-12)
        score = xn @ cn.T
    elif assign == "euclidean":
        score = -_sq_distances(features.float(), centres).sqrt()
    else:
        raise ConfigError(f"assign must be 'cosine' or 'euclidean', got {assign!r}")
    top_k = min(int(top_k), centres.shape[0])
    # stable descending sort keeps the lower centre id first among equal scores
    order = torch.argsort(score, dim=1, descending=True, stable=True)[:, :top_k]
    values = score.gather(1, order)
    if valid is not None:
        order[~valid] = -1
        values[~valid] = 0.0
    return order, values


def modality_codes(features, n_codes, top_k, seed, fit_mask=None, valid_mask=None,
                   assign="cosine", iters=100, tol=1e-4):
    """K-means codes of one modality.

    Args:
        features: ``[N, d]`` item features (row 0 = PAD).
        n_codes: number of centres ``c``.
        top_k: centres linked per item.
        seed: k-means seed.
        fit_mask: ``[N]`` bool, items the centres are fitted on (e.g. training items);
            None = all valid items (official MMSR).
        valid_mask: ``[N]`` bool presence mask; zero rows are invalid in any case.
        assign: ``'cosine'`` (ours) or ``'euclidean'`` (official).

    Returns:
        ``(centres FloatTensor[c, d], item_code_indices LongTensor[N, top_k] (-1 = none),
        item_code_weights FloatTensor[N, top_k])``.
    """
    features = features.float()
    valid = features.norm(dim=1) > 0
    if valid_mask is not None:
        valid &= torch.as_tensor(valid_mask, dtype=torch.bool, device=features.device)
    fit = valid if fit_mask is None else valid & torch.as_tensor(
        fit_mask, dtype=torch.bool, device=features.device)
    n_fit = int(fit.sum())
    if n_fit < n_codes:
        raise ConfigError(f"modality_codes: only {n_fit} items to fit {n_codes} codes; "
                          f"lower code_num")
    centres, _ = kmeans(features[fit], n_codes, seed=seed, iters=iters, tol=tol)
    indices, weights = assign_codes(features, centres, top_k, assign=assign, valid=valid)
    return centres, indices, weights
