"""The statistics behind the rankings: ranks, bootstrap CIs, Friedman, Wilcoxon + Holm, Nemenyi CD, metric agreement
(Kendall's τ and W per image), Pareto front.

Plain numpy/scipy on arrays, no pandas and no file access, so each function can be checked against a hand
computation. A "table" is an ``(n_images, k_methods)`` array; a row with a missing value is all-NaN after
:func:`complete_rows`, because a rank is only defined against every competing method (Demšar 2006, JMLR 7:1-30).
"""

from __future__ import annotations

from itertools import combinations
from typing import Iterator, Sequence

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05

#: Nemenyi's critical values q_0.05 for k = 2..10 methods (studentized range / √2; Demšar 2006, Table 5a).
NEMENYI_Q_005 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}

# Cap on the elements of one block of bootstrap resamples (n_boot × n_images), so 50,000 images × 2,000 resamples
# are drawn in blocks of a few tens of MB instead of one 800 MB index array.
_BOOTSTRAP_BLOCK_ELEMENTS = 4_000_000


# --- ranks ----------------------------------------------------------------------------------------------------------


def complete_rows(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows with a finite value for every column."""
    values = np.asarray(values, dtype=float)
    return np.isfinite(values).all(axis=1) if values.size else np.zeros(len(values), dtype=bool)


def rank_rows(values: np.ndarray, direction: str) -> np.ndarray:
    """Rank the methods within each image: 1 is best, ties share the average rank, incomplete rows are NaN."""
    values = np.asarray(values, dtype=float)
    ranks = np.full(values.shape, np.nan)
    complete = complete_rows(values)
    if complete.any():
        oriented = -values[complete] if direction == "higher" else values[complete]
        ranks[complete] = scipy_stats.rankdata(oriented, method="average", axis=1)
    return ranks


def win_shares(ranks: np.ndarray) -> np.ndarray:
    """Per image, 1 for the method ranked first, 1/m each when m methods tie for first; NaN rows stay NaN."""
    ranks = np.asarray(ranks, dtype=float)
    shares = np.full(ranks.shape, np.nan)
    complete = complete_rows(ranks)
    if complete.any():
        rows = ranks[complete]
        first = rows == rows.min(axis=1, keepdims=True)
        shares[complete] = first / first.sum(axis=1, keepdims=True)
    return shares


# --- bootstrap ------------------------------------------------------------------------------------------------------


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks of resampling counts: row b, column i says how often image i was drawn in resample b.

    Counts instead of index arrays turn every resampled mean into one matrix product, and every statistic of one
    summary can share the same resamples (the per-metric ranks and their average stay paired).
    """
    if n <= 0:
        return
    block = max(1, _BOOTSTRAP_BLOCK_ELEMENTS // n)
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        draws = rng.integers(0, n, size=(size, n))
        flat = (draws + (np.arange(size) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=size * n).reshape(size, n).astype(float)


def bootstrap_means(tables: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Bootstrap distribution of the column means of each table, over the same image resamples.

    Every table has the same rows (images); a row is either finite everywhere or NaN everywhere (an image that does
    not count for that table), and a resample's mean is over its drawn rows that count. Returns one
    ``(n_boot, k)`` array per table; a resample that drew no counting row is NaN.
    """
    tables = [np.asarray(t, dtype=float) for t in tables]
    if not tables:
        return []
    n = len(tables[0])
    counting = [complete_rows(t).astype(float) for t in tables]
    filled = [np.where(np.isfinite(t), t, 0.0) for t in tables]
    blocks: list[list[np.ndarray]] = [[] for _ in tables]
    everywhere = [bool(mask.all()) for mask in counting]
    for counts in bootstrap_counts(n, n_boot, rng):
        for i, (table, mask) in enumerate(zip(filled, counting)):
            # A resample draws n rows: where every row counts, that is its count (exactly: the sum of whole numbers).
            drawn = np.full(len(counts), float(n)) if everywhere[i] else counts @ mask
            with np.errstate(invalid="ignore", divide="ignore"):
                blocks[i].append((counts @ table) / drawn[:, None])
    return [np.concatenate(b) if b else np.full((0, t.shape[1]), np.nan) for b, t in zip(blocks, tables)]


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples along axis 0 (NaN samples ignored; NaN if none is finite)."""
    samples = np.asarray(samples, dtype=float)
    tail = (1.0 - level) / 2.0 * 100.0
    if samples.size == 0 or not np.isfinite(samples).any():
        return (float("nan"), float("nan"))
    lo, hi = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return (float(lo), float(hi))


def bootstrap_medians(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``n_boot`` resamples (with replacement) of the finite values, without drawing the resamples.

    Drawing n values with replacement is drawing ``floor(n·U_i)`` from the sorted values with iid uniform U_i, so a
    resample's k-th smallest value is the one at ``floor(n·U_(k))``, with ``U_(k) ~ Beta(k, n + 1 − k)``; given it,
    ``U_(k+1) = U_(k) + (1 − U_(k))·Beta(1, n − k)``. Same distribution as ``np.median(values[rng.integers(0, n,
    n)])``, in O(n_boot) instead of O(n_boot·n): 50,000 images × 2,000 resamples took 5 s per method and metric.
    """
    values = np.sort(np.asarray(values, dtype=float).ravel())
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return np.full(n_boot, np.nan)
    k = (n + 1) // 2  # 1-based rank of the lower middle order statistic
    lower = rng.beta(k, n + 1 - k, size=n_boot)
    upper = lower if n % 2 else lower + (1.0 - lower) * rng.beta(1, n - k, size=n_boot)
    def value_at(u: np.ndarray) -> np.ndarray:
        return values[np.minimum((u * n).astype(np.int64), n - 1)]

    return (value_at(lower) + value_at(upper)) / 2.0


def median_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator, level: float = 0.95):
    """Median of the finite values and its percentile-bootstrap CI: ``(median, (lo, hi))``; NaNs if none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), (float("nan"), float("nan"))
    return float(np.median(values)), percentile_ci(bootstrap_medians(values, n_boot, rng), level)


# --- tests ----------------------------------------------------------------------------------------------------------


def friedman(values: np.ndarray, alpha: float = ALPHA) -> dict:
    """Friedman's test over the complete rows of a table, with Kendall's W as its effect size.

    Returns ``statistic``, ``p``, ``kendalls_w``, ``n_images``, ``k``, ``reject`` and ``skipped`` (``None``, or why
    the test was not run: fewer than 3 methods, fewer than 2 complete images, or every image ties every method).
    """
    values = np.asarray(values, dtype=float)
    k = values.shape[1] if values.ndim == 2 else 0
    rows = values[complete_rows(values)] if k else values
    result = {"statistic": None, "p": None, "kendalls_w": None, "n_images": int(len(rows)), "k": int(k),
              "reject": None, "skipped": None}
    if k < 3:
        result["skipped"] = f"needs at least 3 methods, got {k}"
    elif len(rows) < 2:
        result["skipped"] = f"needs at least 2 images with a value for every method, got {len(rows)}"
    elif np.all(rows == rows[:, :1]):
        # scipy divides by zero here (its tie correction is 0); there is nothing to test.
        result["skipped"] = "every image ties every method"
    if result["skipped"]:
        return result
    statistic, p = scipy_stats.friedmanchisquare(*rows.T)
    n = len(rows)
    result.update(statistic=float(statistic), p=float(p), reject=bool(p < alpha),
                  kendalls_w=float(statistic / (n * (k - 1))))
    return result


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (Kerby 2014): (R+ − R−) / (R+ + R−).

    +1: every nonzero difference is positive; −1: every one is negative; zero differences are dropped, as the
    Wilcoxon test (zero_method='wilcox') drops them. 0 when no difference is nonzero.
    """
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    if len(d) == 0:
        return 0.0
    ranks = scipy_stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def wilcoxon_pair(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired values ``a`` vs ``b`` (finite pairs only).

    ``effect_size`` is the rank-biserial correlation of ``a − b``: positive when ``a`` tends to be larger.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    result = {"n": int(len(d)), "statistic": None, "p": None, "effect_size": rank_biserial(d)}
    if not np.any(d != 0):
        # No nonzero difference: no evidence of any difference (scipy warns and divides by zero here).
        result.update(statistic=0.0, p=1.0)
        return result
    test = scipy_stats.wilcoxon(a[keep], b[keep], zero_method="wilcox", alternative="two-sided")
    result.update(statistic=float(test.statistic), p=float(test.pvalue))
    return result


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given): max over j ≤ i of min(1, (m − j + 1)·p_(j))."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def pairwise_wilcoxon(values: np.ndarray, names: Sequence[str], direction: str, alpha: float = ALPHA) -> list[dict]:
    """Wilcoxon signed-rank test for every pair of columns on the complete rows, Holm-adjusted across the pairs.

    Each entry: ``a``, ``b``, ``n``, ``statistic``, ``p``, ``p_holm``, ``effect_size`` (rank-biserial of a − b),
    ``reject`` (p_holm < alpha) and ``better`` (the method the effect size favours given ``direction``, or None
    when it is 0).
    """
    values = np.asarray(values, dtype=float)
    rows = values[complete_rows(values)]
    pairs = []
    for i, j in combinations(range(len(names)), 2):
        entry = {"a": names[i], "b": names[j], **wilcoxon_pair(rows[:, i], rows[:, j])}
        r = entry["effect_size"]
        a_smaller = r < 0
        entry["better"] = None if r == 0 else (names[i] if a_smaller == (direction == "lower") else names[j])
        pairs.append(entry)
    if pairs:
        for entry, adjusted in zip(pairs, holm([e["p"] for e in pairs])):
            entry["p_holm"] = float(adjusted)
            entry["reject"] = bool(adjusted < alpha)
    return pairs


def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float | None:
    """Nemenyi critical difference of mean ranks, q_α·√(k(k+1)/(6n)); None outside the table (k 2..10, α 0.05)."""
    if alpha != 0.05 or k not in NEMENYI_Q_005 or n < 1:
        return None
    return float(NEMENYI_Q_005[k] * np.sqrt(k * (k + 1) / (6.0 * n)))


# --- agreement between metrics ---------------------------------------------------------------------------------------


def kendall_tau_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's τ-b between rows of two tables of oriented scores (lower = better in both), one value per row.

    Each row compares the method orderings two metrics give one image: concordant minus discordant method pairs over
    √(pairs untied in a · pairs untied in b), which is scipy's ``kendalltau`` (τ-b). A row with a missing value, or
    where either metric ties every method, has no τ: NaN.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    k = a.shape[1]
    agree = np.zeros(len(a))
    untied_a = np.zeros(len(a))
    untied_b = np.zeros(len(a))
    for i, j in combinations(range(k), 2):
        sign_a, sign_b = np.sign(a[:, i] - a[:, j]), np.sign(b[:, i] - b[:, j])
        agree += sign_a * sign_b
        untied_a += sign_a != 0
        untied_b += sign_b != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = agree / np.sqrt(untied_a * untied_b)
    complete = complete_rows(np.hstack([a, b])) if k else np.zeros(len(a), dtype=bool)
    return np.where(complete & (untied_a > 0) & (untied_b > 0), tau, np.nan)


def kendalls_w_rows(ranks: np.ndarray) -> np.ndarray:
    """Kendall's W (coefficient of concordance, tie-corrected) of m metrics ranking k methods, one value per image.

    ``ranks`` is ``(n_images, m_metrics, k_methods)`` of per-image ranks (ties as average ranks). With R_j the sum of
    method j's ranks over the metrics and S = Σ (R_j − m(k + 1)/2)², W = 12·S / (m²(k³ − k) − m·Σ_metrics Σ_ties
    (t³ − t)): 1 when every metric orders the methods the same way, 0 when their orders cancel out. NaN for an image
    with a missing rank or where every metric ties every method.
    """
    ranks = np.asarray(ranks, dtype=float)
    n, m, k = ranks.shape
    sums = ranks.sum(axis=1)
    s = ((sums - m * (k + 1) / 2.0) ** 2).sum(axis=1)
    ties = _tie_terms(ranks).sum(axis=1)
    denominator = m * m * (k ** 3 - k) - m * ties
    with np.errstate(invalid="ignore", divide="ignore"):
        w = 12.0 * s / denominator
    complete = np.isfinite(ranks).all(axis=(1, 2))
    return np.where(complete & (denominator > 0), w, np.nan)


def _tie_terms(ranks: np.ndarray) -> np.ndarray:
    """Σ (t³ − t) over the groups of t equal ranks of each ``(image, metric)`` row of ``(n, m, k)`` ranks; 0 for a row
    with a missing rank. Runs of equal values in the sorted rows, k steps over every row at once: a loop over images
    took a minute at a million."""
    ordered = np.sort(ranks, axis=2)
    run = np.ones(ordered.shape[:2])
    total = np.zeros(ordered.shape[:2])
    for j in range(1, ordered.shape[2]):
        same = ordered[:, :, j] == ordered[:, :, j - 1]
        total += np.where(same, 0.0, run ** 3 - run)
        run = np.where(same, run + 1.0, 1.0)
    total += run ** 3 - run
    return np.where(np.isfinite(ranks).all(axis=2), total, 0.0)


def mean_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator, level: float = 0.95):
    """Mean of the finite values and its percentile-bootstrap CI: ``(mean, (lo, hi), n)``; NaNs if none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), (float("nan"), float("nan")), 0
    (boot,) = bootstrap_means([values[:, None]], n_boot, rng)
    return float(values.mean()), percentile_ci(boot[:, 0], level), int(len(values))


# --- trade-offs -----------------------------------------------------------------------------------------------------


def pareto_front(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Mask of the points no other point dominates (at least as good on every axis, better on one)."""
    points = np.asarray(points, dtype=float)
    signs = np.array([-1.0 if d == "higher" else 1.0 for d in directions])
    costs = points * signs  # lower is better on every axis now
    on_front = np.isfinite(costs).all(axis=1)
    others = costs[on_front]  # points with a value on every axis: the only ones that can dominate
    for i in np.flatnonzero(on_front):
        dominated = np.any(np.all(others <= costs[i], axis=1) & np.any(others < costs[i], axis=1))
        on_front[i] = not dominated
    return on_front
