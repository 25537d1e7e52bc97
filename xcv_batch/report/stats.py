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
from scipy import special
from scipy import stats as scipy_stats

ALPHA = 0.05

#: Most methods ranked by pairwise comparisons (k² passes over the rows) rather than by sorting every row; scipy's
#: rankdata along rows took 1.4 s for a million rows of 5 methods, the comparisons 0.05 s.
_COMPARISON_RANK_MAX_K = 12
#: Below this many pairs scipy's Wilcoxon test may be exact (or a permutation test); from it on it is the normal
#: approximation, computed here from one ranking that the effect size shares.
_WILCOXON_EXACT_MAX_N = 50

#: Nemenyi's critical values q_0.05 for k = 2..10 methods (studentized range / √2; Demšar 2006, Table 5a).
NEMENYI_Q_005 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}

# Cap on the elements of one block of bootstrap resamples (n_boot × n_images), so 50,000 images × 2,000 resamples
# are drawn in blocks of a few tens of MB instead of one 800 MB index array.
_BOOTSTRAP_BLOCK_ELEMENTS = 4_000_000

#: How a resample's means are drawn. ``resample``: n images drawn with replacement, O(resamples × images).
#: ``normal``: the resample's sums drawn from their large-sample normal law, whose mean and covariance are exactly
#: those of resampling images, O(images × columns² + resamples × columns²). ``auto``: ``normal`` where every table that
#: any image counts for has at least :data:`LARGE_SAMPLE_IMAGES` counting images, ``resample`` otherwise.
RESAMPLE, NORMAL, AUTO = "resample", "normal", "auto"
SCHEMES = (AUTO, RESAMPLE, NORMAL)
#: From this many counting images on, ``auto`` draws from the normal law. A mean of 50,000 draws is normal to within
#: its skewness / √50,000 (Berry–Esseen), under 1 % of a standard error for any metric here, far below the Monte Carlo
#: error of a 95 % bound from 2,000 resamples (about 6 % of a standard error); resampling 1,000,000 images 2,000 times
#: would take hours for each of the summary's ~200 intervals.
LARGE_SAMPLE_IMAGES = 50_000
# Rows per block when the normal law's covariance is summed, so a million images × 66 columns never sit in memory.
_MOMENT_BLOCK_ROWS = 65_536


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
        ranks[complete] = row_ranks(oriented)
    return ranks


def row_ranks(rows: np.ndarray) -> np.ndarray:
    """Average ranks within each row of finite values: scipy's ``rankdata(rows, 'average', axis=1)``, the same numbers
    (1 + the values below + half the others equal: sums of halves, exact in floating point)."""
    rows = np.asarray(rows, dtype=float)
    k = rows.shape[1] if rows.ndim == 2 else 0
    if k > _COMPARISON_RANK_MAX_K:
        return scipy_stats.rankdata(rows, method="average", axis=1)
    columns = np.ascontiguousarray(rows.T)  # one method's values side by side: each comparison streams through memory
    ranks = np.ones(columns.shape)
    for i, j in combinations(range(k), 2):
        below, equal = columns[i] < columns[j], columns[i] == columns[j]
        half = 0.5 * equal
        ranks[j] += below + half
        ranks[i] += (~below & ~equal) + half
    return ranks.T


def average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) of a 1-D array of finite values, as scipy's ``rankdata(values, 'average')``, and the
    size of each group of equal values. One argsort: scipy's rankdata took five times as long on a million values."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values)
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(values) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(values)])
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(starts + (sizes + 1) / 2.0, sizes)
    return ranks, sizes


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


def bootstrap_means(tables: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator,
                    scheme: str = RESAMPLE) -> list[np.ndarray]:
    """Bootstrap distribution of the column means of each table, over the same image resamples.

    Every table has the same rows (images); a row is either finite everywhere or NaN everywhere (an image that does
    not count for that table), and a resample's mean is over its drawn rows that count. Returns one
    ``(n_boot, k)`` array per table; a resample that drew no counting row is NaN. ``scheme``: see :data:`SCHEMES`.
    """
    tables = [np.asarray(t, dtype=float) for t in tables]
    if not tables:
        return []
    if scheme not in SCHEMES:
        raise ValueError(f"bootstrap scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    n = len(tables[0])
    complete = [complete_rows(t) for t in tables]
    # A table no image counts for has NaN means either way; any other must have enough images for the normal law.
    counted = [int(mask.sum()) for mask in complete]
    if scheme == NORMAL or (scheme == AUTO and min([c for c in counted if c] or [0]) >= LARGE_SAMPLE_IMAGES):
        return normal_bootstrap_means(tables, complete, n_boot, rng)
    counting = [mask.astype(float) for mask in complete]
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


def normal_bootstrap_means(tables: Sequence[np.ndarray], counting: Sequence[np.ndarray], n_boot: int,
                           rng: np.random.Generator) -> list[np.ndarray]:
    """:func:`bootstrap_means` of ``tables`` whose rows count where ``counting`` (a boolean per row), each resample
    drawn from the large-sample normal law of resampling.

    A resample draws counts c ~ Multinomial(n, 1/n each); per image put its values and its counting flag side by
    side in v_i. The resample's sums Σ c_i v_i have mean n·v̄ and covariance n·Σ, with Σ the population covariance of
    the v_i; those sums are drawn as n·v̄ + √n·Σ^½·z, and each mean is its table's value sums over its counting sum,
    as in resampling. All tables share each z, so their means stay paired as when they share the resamples. A column
    that every row counts for keeps a count of exactly n (its variance is 0).
    """
    n = len(tables[0])
    widths = [t.shape[1] + 1 for t in tables]

    def rows(start: int) -> np.ndarray:
        """The v_i of a block of images: each table's values (0 where it does not count), then its counting flag."""
        end = start + _MOMENT_BLOCK_ROWS
        parts = []
        for table, mask in zip(tables, counting):
            flag = mask[start:end, None]
            parts += [np.where(flag, table[start:end], 0.0), flag]
        return np.hstack(parts).astype(float)

    total = np.zeros(sum(widths))
    for start in range(0, n, _MOMENT_BLOCK_ROWS):
        total += rows(start).sum(axis=0)
    mean = total / n
    scatter = np.zeros((len(mean), len(mean)))
    for start in range(0, n, _MOMENT_BLOCK_ROWS):
        centred = rows(start) - mean
        scatter += centred.T @ centred
    # Σ^½ from the eigen-decomposition: Σ is only semi-definite (a constant column, columns that sum to another).
    eigenvalues, vectors = np.linalg.eigh(scatter / n)
    root = vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    sums = n * mean + np.sqrt(n) * (rng.standard_normal((n_boot, len(mean))) @ root.T)
    means, first = [], 0
    for width in widths:
        part = sums[:, first:first + width]
        drawn = part[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append(np.where(drawn > 0, part[:, :-1] / drawn, np.nan))
        first += width
    return means


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
    statistic, p = _friedman_chi_square(rows)
    n = len(rows)
    result.update(statistic=float(statistic), p=float(p), reject=bool(p < alpha),
                  kendalls_w=float(statistic / (n * (k - 1))))
    return result


def _friedman_chi_square(rows: np.ndarray) -> tuple[float, float]:
    """Friedman's tie-corrected χ² and its p-value, by scipy's ``friedmanchisquare`` formulas on :func:`row_ranks`
    (rank sums and tie counts are whole or half numbers, exact in floating point, so the statistic is scipy's)."""
    n, k = rows.shape
    ranks = row_ranks(rows)
    ties = _tie_terms(ranks[:, None, :]).sum()
    c = 1 - ties / (k * (k * k - 1) * n)
    ssbn = np.sum(np.sum(ranks, axis=0) ** 2)
    statistic = (12.0 / (k * n * (k + 1)) * ssbn - 3 * n * (k + 1)) / c
    return float(statistic), float(special.chdtrc(k - 1, statistic))


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (Kerby 2014): (R+ − R−) / (R+ + R−).

    +1: every nonzero difference is positive; −1: every one is negative; zero differences are dropped, as the
    Wilcoxon test (zero_method='wilcox') drops them. 0 when no difference is nonzero.
    """
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    if len(d) == 0:
        return 0.0
    ranks, _ = average_ranks(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def wilcoxon_pair(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired values ``a`` vs ``b`` (finite pairs only).

    ``effect_size`` is the rank-biserial correlation of ``a − b``: positive when ``a`` tends to be larger.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    result = {"n": int(len(d)), "statistic": None, "p": None, "effect_size": 0.0}
    if not np.any(d != 0):
        # No nonzero difference: no evidence of any difference (scipy warns and divides by zero here).
        result.update(statistic=0.0, p=1.0)
        return result
    if len(d) <= _WILCOXON_EXACT_MAX_N:
        test = scipy_stats.wilcoxon(a[keep], b[keep], zero_method="wilcox", alternative="two-sided")
        result.update(statistic=float(test.statistic), p=float(test.pvalue), effect_size=rank_biserial(d))
        return result
    result.update(_wilcoxon_normal(d[d != 0]))  # the test and its effect size from one ranking
    return result


def _wilcoxon_normal(nonzero: np.ndarray) -> dict:
    """The two-sided Wilcoxon signed-rank test of nonzero differences by its tie-corrected normal approximation,
    without continuity correction, with scipy's formulas (``wilcoxon(..., zero_method='wilcox')`` above 50 pairs);
    the rank sums are sums of halves, exact in floating point, so statistic and p are scipy's."""
    ranks, ties = average_ranks(np.abs(nonzero))
    r_plus, r_minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    count = float(len(nonzero))
    mean = count * (count + 1.0) * 0.25
    se = np.sqrt((count * (count + 1.0) * (2.0 * count + 1.0) - np.sum(ties ** 3 - ties) / 2) / 24)
    z = (r_plus - mean) / se
    return {"statistic": float(min(r_plus, r_minus)), "p": float(2 * special.ndtr(-abs(z))),
            "effect_size": float((r_plus - r_minus) / (r_plus + r_minus))}


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
    return kendall_tau_of_orders(pair_orders(a), pair_orders(b))


def pair_orders(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How each row of oriented scores orders every pair of its columns: the signs (images, pairs) as int8, the
    untied pairs per row, and whether the row is complete. One metric's orders serve every pair of metrics it is in:
    :func:`kendall_tau_of_orders`."""
    values = np.asarray(values, dtype=float)
    k = values.shape[1]
    pairs = list(combinations(range(k), 2))
    signs = np.zeros((len(values), len(pairs)), dtype=np.int8)
    for p, (i, j) in enumerate(pairs):
        difference = values[:, i] - values[:, j]
        signs[:, p] = (difference > 0).view(np.int8) - (difference < 0).view(np.int8)  # NaN: 0, an incomplete row
    complete = complete_rows(values) if k else np.zeros(len(values), dtype=bool)
    return signs, np.count_nonzero(signs, axis=1), complete


def kendall_tau_of_orders(a: tuple, b: tuple) -> np.ndarray:
    """:func:`kendall_tau_rows` from two tables' :func:`pair_orders` (the same columns in the same order)."""
    (signs_a, untied_a, complete_a), (signs_b, untied_b, complete_b) = a, b
    agree = np.einsum("ij,ij->i", signs_a, signs_b, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = agree / np.sqrt((untied_a * untied_b).astype(float))
    return np.where(complete_a & complete_b & (untied_a > 0) & (untied_b > 0), tau, np.nan)


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
    with a missing rank. A member of a group of t has e = t − 1 equal others and the group adds t·(t² − 1), so the sum
    is Σ over members of e·(e + 2): k² comparisons over every row at once (a loop over images took a minute at a
    million, sorting each row seconds)."""
    k = ranks.shape[2]
    equal_others = [np.zeros(ranks.shape[:2], dtype=np.int16) for _ in range(k)]
    for i, j in combinations(range(k), 2):
        same = ranks[:, :, i] == ranks[:, :, j]
        equal_others[i] += same
        equal_others[j] += same
    total = np.zeros(ranks.shape[:2], dtype=np.int64)
    for others in equal_others:
        others = others.astype(np.int64)
        total += others * (others + 2)
    return np.where(np.isfinite(ranks).all(axis=2), total.astype(float), 0.0)


def mean_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator, level: float = 0.95,
            scheme: str = RESAMPLE):
    """Mean of the finite values and its percentile-bootstrap CI: ``(mean, (lo, hi), n)``; NaNs if none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), (float("nan"), float("nan")), 0
    (boot,) = bootstrap_means([values[:, None]], n_boot, rng, scheme)
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
