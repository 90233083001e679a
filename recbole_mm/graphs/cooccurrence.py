"""Item co-occurrence matrix from the users' *training* sequences (MDSRec's CRE, Eq 1-2).

For every sequence ``s`` and every position pair ``p < q`` with ``q - p <= window`` and
``s_p != s_q`` (both non-PAD), add ``w(q - p)`` to ``O[s_p, s_q]`` and to ``O[s_q, s_p]``:

- ``mode='adjacent'``: only ``q = p + 1`` (window 1); ``mode='all'``: every pair (optionally
  limited by ``window``);
- ``weight='count'``: ``w = 1``; ``weight='inverse_distance'``: ``w(D) = 1/D`` (MDSRec default);
- repeated items add once per position pair; the diagonal is always zero; ``O`` is symmetric.

Normalisation: ``'row'`` (``D^-1 O``, empty rows stay zero), ``'sym'`` (``D^-1/2 O D^-1/2``)
or ``'none'``. Returns a scipy CSR ``[n_items, n_items]`` float32 matrix.

Only pass training sequences (``dataset.train_sequences()``): anything else leaks the
validation/test items into the graph.

Work is linear in the number of pairs: positions are processed offset by offset, keeping only
positions whose sequence is still long enough.
"""
import numpy as np
import scipy.sparse as sp

from recbole_mm.errors import ConfigError

__all__ = ["cooccurrence_matrix", "normalize_scipy"]


def normalize_scipy(matrix, normalize):
    """Row (``D^-1 A``), symmetric (``D^-1/2 A D^-1/2``) or no normalisation of a scipy matrix."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    if normalize == "none":
        return matrix
    sums = np.asarray(matrix.sum(axis=1)).ravel().astype(np.float64)
    nz = sums > 0
    if normalize == "row":
        inv = np.zeros_like(sums)
        inv[nz] = 1.0 / sums[nz]
        return sp.csr_matrix(sp.diags(inv) @ matrix, dtype=np.float32)
    if normalize == "sym":
        inv = np.zeros_like(sums)
        inv[nz] = sums[nz] ** -0.5
        return sp.csr_matrix(sp.diags(inv) @ matrix @ sp.diags(inv), dtype=np.float32)
    raise ConfigError(f"normalize must be 'row', 'sym' or 'none', got {normalize!r}")


def cooccurrence_matrix(sequences, n_items, mode="adjacent", normalize="row",
                        weight="count", window=None, pad_id=0):
    """Symmetric item co-occurrence matrix of the given sequences (see module docstring).

    Args:
        sequences: iterable of 1-D integer arrays (internal item ids, time order).
        n_items: matrix size (RecBole ``item_num``, PAD included).
        mode: ``'adjacent'`` or ``'all'``.
        normalize: ``'row'``, ``'sym'`` or ``'none'``.
        weight: ``'count'`` or ``'inverse_distance'``.
        window: maximum distance ``q - p`` for ``mode='all'`` (None = unlimited).
        pad_id: item id ignored wherever it appears (None to keep all ids).
    """
    if mode not in ("adjacent", "all"):
        raise ConfigError(f"mode must be 'adjacent' or 'all', got {mode!r}")
    if weight not in ("count", "inverse_distance"):
        raise ConfigError(f"weight must be 'count' or 'inverse_distance', got {weight!r}")
    if window is not None and int(window) < 1:
        raise ConfigError(f"window must be >= 1 or None, got {window!r}")
    max_distance = 1 if mode == "adjacent" else (None if window is None else int(window))

    seqs = [np.asarray(s, dtype=np.int64).ravel() for s in sequences]
    if pad_id is not None:
        seqs = [s[s != pad_id] for s in seqs]
    seqs = [s for s in seqs if s.size > 1]
    if not seqs:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    flat = np.concatenate(seqs)
    if flat.min() < 0 or flat.max() >= n_items:
        raise ValueError(f"item ids must lie in [0, {n_items}), got range "
                         f"[{flat.min()}, {flat.max()}]")
    lengths = np.array([s.size for s in seqs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # remaining[p] = how many positions follow p inside its own sequence
    remaining = np.repeat(starts + lengths, lengths) - np.arange(flat.size) - 1
    positions = np.arange(flat.size)
    longest = int(lengths.max()) - 1
    if max_distance is not None:
        longest = min(longest, max_distance)

    total = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    rows, cols, vals, pending = [], [], [], 0
    for distance in range(1, longest + 1):
        positions = positions[remaining[positions] >= distance]
        if positions.size == 0:
            break
        a, b = flat[positions], flat[positions + distance]
        differ = a != b
        a, b = a[differ], b[differ]
        w = 1.0 if weight == "count" else 1.0 / distance
        rows += [a, b]
        cols += [b, a]
        vals.append(np.full(2 * a.size, w))
        pending += 2 * a.size
        if pending > 20_000_000:  # fold into CSR to bound memory
            total = total + _to_csr(rows, cols, vals, n_items)
            rows, cols, vals, pending = [], [], [], 0
    if pending:
        total = total + _to_csr(rows, cols, vals, n_items)
    return normalize_scipy(total, normalize)


def _to_csr(rows, cols, vals, n_items):
    coo = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(n_items, n_items), dtype=np.float64)
    return coo.tocsr()
