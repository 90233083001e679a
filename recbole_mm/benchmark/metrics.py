"""Per-user metrics from target ranks, and the significance tests of the result tables.

With one target per test user (leave-one-out), every top-k metric of a user follows from the
rank r of the target among all items (1 = first; after history masking):
Hit@k = [r <= k], NDCG@k = [r <= k] / log2(r + 1), MRR@k = [r <= k] / r, Recall@k = Hit@k.
Their means over users equal RecBole's metrics for the same run (checked in the tests).
"""
import math

import numpy as np

from recbole_mm.errors import ConfigError


def per_user(ranks, metric):
    """Per-user values of ``metric`` (``hit@10``, ``ndcg@20``, ``mrr@20``, ``recall@10``)."""
    name, k = metric.lower().split("@")
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks <= int(k)
    if name in ("hit", "recall"):
        return inside.astype(np.float64)
    if name == "ndcg":
        return np.where(inside, 1.0 / np.log2(ranks + 1.0), 0.0)
    if name == "mrr":
        return np.where(inside, 1.0 / ranks, 0.0)
    raise ConfigError(f"no per-user form for metric '{metric}'. Fix: use hit, recall, ndcg or mrr at a cut-off, "
                      "e.g. ndcg@20 (in a claims file: compare.metric).")


def mean_sd(values):
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def paired_t_p(a, b):
    """Two-sided p of the paired t-test of a - b (e.g. one value per seed); nan below 2 pairs
    or when every difference is equal (no variance to test)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(a) != len(b):
        return math.nan
    diff = a - b
    if np.allclose(diff, diff[0]):
        return 0.0 if diff[0] != 0 else 1.0
    from scipy.stats import ttest_rel

    return float(ttest_rel(a, b).pvalue)


def wilcoxon_p(a, b):
    """Two-sided p of the Wilcoxon signed-rank test on paired per-user values (zero
    differences dropped, as in Wilcoxon's original test); nan when nothing differs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or not np.any(a != b):
        return math.nan
    from scipy.stats import wilcoxon

    return float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)
