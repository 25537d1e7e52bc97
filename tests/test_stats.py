"""The statistics on arrays with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from xcv_batch.report import stats


def test_rank_rows_lower_and_higher_with_ties_and_incomplete_rows():
    values = np.array([
        [0.1, 0.2, 0.3],
        [0.5, 0.5, 0.1],       # tie for 2nd/3rd → 2.5 each
        [np.nan, 0.2, 0.3],    # incomplete: no ranks
    ])
    ranks = stats.rank_rows(values, "lower")
    np.testing.assert_array_equal(ranks[0], [1, 2, 3])
    np.testing.assert_array_equal(ranks[1], [2.5, 2.5, 1])
    assert np.isnan(ranks[2]).all()
    np.testing.assert_array_equal(stats.rank_rows(values, "higher")[:2], [[3, 2, 1], [1.5, 1.5, 3]])


def test_win_shares_split_ties_for_first():
    ranks = np.array([[1, 2, 3], [1.5, 1.5, 3], [2, 2, 2], [np.nan] * 3])
    shares = stats.win_shares(ranks)
    np.testing.assert_allclose(shares[:3], [[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])
    assert np.isnan(shares[3]).all()


def test_bootstrap_counts_draw_n_images_per_resample_in_blocks(monkeypatch):
    monkeypatch.setattr(stats, "_BOOTSTRAP_BLOCK_ELEMENTS", 70)  # 7 resamples of 10 per block
    blocks = list(stats.bootstrap_counts(10, 25, np.random.default_rng(0)))
    assert [len(b) for b in blocks] == [7, 7, 7, 4]
    assert all((b.sum(axis=1) == 10).all() for b in blocks)


def test_bootstrap_means_match_a_hand_resample_and_skip_non_counting_rows():
    table = np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, np.nan], [5.0, 0.0]])
    (boot,) = stats.bootstrap_means([table], 200, np.random.default_rng(1))
    # Every resample mean is over rows 0, 1 and 3 only, so column 0 stays within [1, 5].
    finite = np.isfinite(boot[:, 0])
    assert finite.sum() > 190 and ((boot[finite, 0] >= 1) & (boot[finite, 0] <= 5)).all()
    # The same generator state gives the same counts; the mean by hand from them:
    counts = next(stats.bootstrap_counts(4, 1, np.random.default_rng(5)))[0]
    (one,) = stats.bootstrap_means([table], 1, np.random.default_rng(5))
    kept = counts * np.array([1, 1, 0, 1])
    assert kept.sum() > 0
    np.testing.assert_allclose(one[0], (kept @ np.nan_to_num(table)) / kept.sum())


def _skewed_tables(n: int, seed: int = 0) -> list[np.ndarray]:
    """A log-normal table with 30 % of its rows not counting, and a rank table every row counts for."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(0.0, 1.0, (n, 3))
    values[rng.random(n) < 0.3] = np.nan
    return [values, stats.rank_rows(rng.normal(size=(n, 4)) + np.arange(4) * 0.05, "lower")]


def test_normal_scheme_gives_the_percentile_cis_of_resampling_images():
    tables = _skewed_tables(20_000)
    resampled = stats.bootstrap_means(tables, 4000, np.random.default_rng(0), stats.RESAMPLE)
    normal = stats.bootstrap_means(tables, 4000, np.random.default_rng(1), stats.NORMAL)
    for exact, drawn in zip(resampled, normal):
        assert drawn.shape == exact.shape
        for j in range(exact.shape[1]):
            lo, hi = stats.percentile_ci(exact[:, j])
            # Each 95 % bound from 4,000 resamples has a Monte Carlo error of about 1 % of the interval's width;
            # a variance off by a factor of 2 would move the bounds by 20 % of it.
            assert stats.percentile_ci(drawn[:, j]) == pytest.approx((lo, hi), abs=0.06 * (hi - lo))
            assert drawn[:, j].std() == pytest.approx(exact[:, j].std(), rel=0.06)
    # The tables stay paired: a resample's means of different tables are as correlated as when resampling.
    for a, b in ((0, 1), (0, 2)):
        assert np.corrcoef(normal[0][:, a], normal[0][:, b])[0, 1] == pytest.approx(
            np.corrcoef(resampled[0][:, a], resampled[0][:, b])[0, 1], abs=0.05)


def test_normal_scheme_draws_means_with_the_variance_of_resampled_means():
    values = np.random.default_rng(4).exponential(size=(5_000, 1))
    (drawn,) = stats.bootstrap_means([values], 40_000, np.random.default_rng(0), stats.NORMAL)
    # A mean of n draws with replacement has the population variance / n; 40,000 draws: standard error 0.4 %.
    assert drawn.mean() == pytest.approx(values.mean(), rel=1e-3)
    assert drawn.std() == pytest.approx(values.std() / np.sqrt(len(values)), rel=0.015)


def test_auto_scheme_resamples_below_the_large_sample_size_and_draws_from_the_normal_law_from_it(monkeypatch):
    tables = _skewed_tables(150, seed=2)
    counting = int(stats.complete_rows(tables[0]).sum())
    assert counting < 150

    def means(scheme, tables):
        return stats.bootstrap_means(tables, 50, np.random.default_rng(9), scheme)

    for size, scheme in ((counting + 1, stats.RESAMPLE), (counting, stats.NORMAL)):
        monkeypatch.setattr(stats, "LARGE_SAMPLE_IMAGES", size)  # the fewest counting images of any table decides
        for auto, chosen in zip(means(stats.AUTO, tables), means(scheme, tables)):
            np.testing.assert_array_equal(auto, chosen)
    # A table no image counts for (NaN means either way) does not hold the others to resampling.
    monkeypatch.setattr(stats, "LARGE_SAMPLE_IMAGES", counting)
    nothing = np.full((150, 2), np.nan)
    for auto, chosen in zip(means(stats.AUTO, [*tables, nothing]), means(stats.NORMAL, [*tables, nothing])):
        np.testing.assert_array_equal(auto, chosen)
    assert np.isnan(means(stats.NORMAL, [*tables, nothing])[2]).all()
    with pytest.raises(ValueError, match="bootstrap scheme"):
        means("jackknife", tables)


def test_median_ci_contains_true_median_on_synthetic_data():
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 1.0, size=400)
    median, (lo, hi) = stats.median_ci(values, 1000, np.random.default_rng(1))
    assert median == pytest.approx(np.median(values))
    assert lo < 5.0 < hi
    assert hi - lo < 0.4  # ~ 2 × 1.96 × 1.25σ/√n ≈ 0.25


@pytest.mark.parametrize("n", [1, 2, 7, 8])
def test_bootstrap_medians_have_the_distribution_of_resampled_medians(n):
    values = np.random.default_rng(n).lognormal(size=n)
    brute = np.median(values[np.random.default_rng(0).integers(0, n, size=(40_000, n))], axis=1)
    drawn = stats.bootstrap_medians(np.append(values, np.nan), 40_000, np.random.default_rng(1))
    # Same support and the same probability of each value on it (40,000 draws: standard error ≤ 0.0025).
    support = np.union1d(brute, drawn)
    assert len(support) <= n * (n + 1) / 2  # medians of a resample are values or midpoints of two
    for value in support:
        assert np.mean(drawn == value) == pytest.approx(np.mean(brute == value), abs=0.012)


def test_mean_rank_ci_contains_true_rank_on_iid_methods():
    # Three iid methods: every expected rank is 2.
    values = np.random.default_rng(3).normal(size=(300, 3))
    ranks = stats.rank_rows(values, "lower")
    (boot,) = stats.bootstrap_means([ranks], 1000, np.random.default_rng(0))
    for j in range(3):
        lo, hi = stats.percentile_ci(boot[:, j])
        assert lo < 2.0 < hi


def test_bootstrap_cis_cover_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    median_hits = rank_hits = 0
    draws = 200
    for _ in range(draws):
        values = rng.exponential(size=(60, 3))  # median ln 2; iid methods → expected rank 2
        _, (lo, hi) = stats.median_ci(values[:, 0], 400, rng)
        median_hits += lo <= np.log(2) <= hi
        (boot,) = stats.bootstrap_means([stats.rank_rows(values, "lower")], 400, rng)
        lo, hi = stats.percentile_ci(boot[:, 0])
        rank_hits += lo <= 2.0 <= hi
    # Binomial(200, 0.95) lies in [0.90, 0.99] with probability > 0.99; percentile intervals run a bit narrow.
    assert 0.88 <= median_hits / draws <= 0.99
    assert 0.88 <= rank_hits / draws <= 0.99


@pytest.mark.parametrize("k", [2, 3, 5, 12, 14])
def test_row_ranks_and_friedman_are_scipys_to_the_last_digit(k):
    # Rounded values tie often; 14 methods take scipy's rankdata, fewer the pairwise comparisons.
    values = np.round(np.random.default_rng(k).normal(size=(3000, k)), 1)
    np.testing.assert_array_equal(stats.row_ranks(values), scipy_stats.rankdata(values, method="average", axis=1))
    if k >= 3:
        expected = scipy_stats.friedmanchisquare(*values.T)
        assert stats._friedman_chi_square(values) == (expected.statistic, expected.pvalue)


@pytest.mark.parametrize("n", [20, 50, 51, 400, 30_000])
def test_wilcoxon_pair_is_scipys_to_the_last_digit_with_ties_and_zeros(n):
    rng = np.random.default_rng(n)
    a, b = np.round(rng.normal(0.0, 3.0, size=n)), np.round(rng.normal(0.2, 3.0, size=n))
    assert (a == b).any() and len(np.unique(np.abs(a - b))) < n  # zero differences and ties
    expected = scipy_stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    result = stats.wilcoxon_pair(np.r_[a, np.nan], np.r_[b, 1.0])
    assert (result["n"], result["statistic"], result["p"]) == (n, expected.statistic, expected.pvalue)
    d = (a - b)[a != b]
    ranks = scipy_stats.rankdata(np.abs(d))
    assert result["effect_size"] == (ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum()
    np.testing.assert_array_equal(stats.average_ranks(np.abs(d))[0], ranks)


def test_friedman_rejects_when_one_method_is_clearly_better():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 3))
    values[:, 0] -= 3.0
    result = stats.friedman(values)
    assert result["reject"] and result["p"] < 1e-4
    expected = scipy_stats.friedmanchisquare(*values.T)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["kendalls_w"] == pytest.approx(expected.statistic / (20 * 2))


def test_friedman_does_not_reject_on_iid_methods():
    values = np.random.default_rng(0).normal(size=(30, 4))
    result = stats.friedman(values)
    assert result["p"] > 0.05 and result["reject"] is False


@pytest.mark.parametrize("values, reason", [
    (np.ones((5, 2)), "at least 3 methods"),
    (np.array([[1.0, 2.0, 3.0], [np.nan, 1.0, 2.0]]), "at least 2 images"),
    (np.ones((4, 3)), "ties every method"),
])
def test_friedman_says_why_it_was_skipped(values, reason):
    result = stats.friedman(values)
    assert result["p"] is None and reason in result["skipped"]


def test_holm_matches_hand_computation():
    # sorted p: 0.01, 0.02, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.04, 0.06, 0.06, 0.04 → running max 0.04, 0.06, 0.06, 0.06
    adjusted = stats.holm([0.03, 0.01, 0.04, 0.02])
    np.testing.assert_allclose(adjusted, [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1


def test_rank_biserial_hand_values():
    # |d| ranks: 1 → 1, 2 → 2, 3 → 3; positive ranks 1 + 3 = 4, negative 2 → (4 − 2) / 6
    assert stats.rank_biserial(np.array([1.0, -2.0, 3.0, 0.0])) == pytest.approx(1 / 3)
    assert stats.rank_biserial(np.array([-1.0, -2.0])) == -1.0
    assert stats.rank_biserial(np.zeros(3)) == 0.0


def test_pairwise_wilcoxon_with_holm_and_direction():
    rng = np.random.default_rng(0)
    a = rng.normal(size=15)
    values = np.column_stack([a - 2.0, a, a + rng.normal(scale=0.01, size=15)])
    pairs = stats.pairwise_wilcoxon(values, ["x", "y", "z"], "lower")
    assert [(p["a"], p["b"]) for p in pairs] == [("x", "y"), ("x", "z"), ("y", "z")]
    raw = [scipy_stats.wilcoxon(values[:, i], values[:, j]).pvalue for i, j in [(0, 1), (0, 2), (1, 2)]]
    np.testing.assert_allclose([p["p"] for p in pairs], raw)
    np.testing.assert_allclose([p["p_holm"] for p in pairs], stats.holm(raw))
    assert pairs[0]["effect_size"] == -1.0 and pairs[0]["better"] == "x" and pairs[0]["reject"]
    assert not pairs[2]["reject"]
    higher = stats.pairwise_wilcoxon(values, ["x", "y", "z"], "higher")
    assert higher[0]["better"] == "y"


def test_wilcoxon_with_no_differences_is_p_one():
    result = stats.wilcoxon_pair(np.arange(5.0), np.arange(5.0))
    assert result == {"n": 5, "statistic": 0.0, "p": 1.0, "effect_size": 0.0}


def test_nemenyi_cd_matches_demsar_formula():
    # Demšar 2006: k = 4, N = 14, q = 2.569 → CD = 2.569 · √(4·5 / 84) ≈ 1.2536
    assert stats.nemenyi_cd(4, 14) == pytest.approx(2.569 * np.sqrt(20 / 84))
    assert stats.nemenyi_cd(11, 14) is None and stats.nemenyi_cd(3, 10, alpha=0.1) is None


def test_pareto_front_lower_and_higher():
    points = np.array([[1.0, 5.0], [2.0, 2.0], [3.0, 3.0], [5.0, 1.0], [np.nan, 0.0]])
    np.testing.assert_array_equal(stats.pareto_front(points, ["lower", "lower"]), [True, True, False, True, False])
    np.testing.assert_array_equal(stats.pareto_front(points[:4], ["lower", "higher"]), [True, False, False, False])


# --- agreement between metrics --------------------------------------------------------------------------------------


def test_kendall_tau_rows_equal_scipy_tau_b_with_ties_and_nan_where_undefined():
    rng = np.random.default_rng(2)
    a = np.round(rng.random((40, 5)), 1)  # one decimal: many ties
    b = np.round(rng.random((40, 5)), 1)
    a[3] = 0.5  # a ties every method: τ undefined
    b[7, 2] = np.nan  # incomplete
    taus = stats.kendall_tau_rows(a, b)
    for i in range(40):
        if i in (3, 7):
            assert np.isnan(taus[i])
        else:
            assert taus[i] == pytest.approx(scipy_stats.kendalltau(a[i], b[i]).statistic, abs=1e-12)


def test_kendalls_w_rows_equal_the_friedman_statistic_over_metrics():
    # Friedman's χ² over m blocks (the metrics) ranking k treatments (the methods) is m(k − 1)·W, tie-corrected.
    rng = np.random.default_rng(3)
    n, m, k = 20, 3, 5
    values = np.round(rng.random((n, m, k)), 1)
    ranks = np.stack([stats.rank_rows(values[:, j], "lower") for j in range(m)], axis=1)
    w = stats.kendalls_w_rows(ranks)
    for i in range(n):
        chi2 = scipy_stats.friedmanchisquare(*ranks[i].T).statistic
        assert w[i] == pytest.approx(chi2 / (m * (k - 1)), abs=1e-12)
    # By hand: two metrics, ranks (1, 2, 3) and (1, 3, 2): rank sums (2, 5, 5), S = 6, W = 12·6 / (4·24) = 0.75.
    assert stats.kendalls_w_rows(np.array([[[1, 2, 3], [1, 3, 2]]], dtype=float))[0] == pytest.approx(0.75)
    assert np.isnan(stats.kendalls_w_rows(np.array([[[2, 2, 2], [2, 2, 2]]], dtype=float))[0])  # all tied


def test_kendalls_w_tie_terms_equal_counting_each_row_with_unique():
    # The tie correction, row by row with np.unique (the direct reading of the formula), on ranks with many ties and
    # missing values: the vectorised runs must give the same sums, exactly.
    rng = np.random.default_rng(5)
    n, m, k = 300, 3, 6
    values = rng.integers(0, 3, size=(n, m, k)).astype(float)
    values[rng.random((n, m, k)) < 0.02] = np.nan
    ranks = np.stack([stats.rank_rows(values[:, j], "lower") for j in range(m)], axis=1)
    expected = np.zeros((n, m))
    for image in range(n):
        for metric in range(m):
            row = ranks[image, metric]
            if np.isfinite(row).all():
                _, counts = np.unique(row, return_counts=True)
                expected[image, metric] = float((counts.astype(float) ** 3 - counts).sum())
    assert np.array_equal(stats._tie_terms(ranks), expected)
    assert expected.max() == 6 ** 3 - 6 and (expected == 0).any()  # a row tying every method, and rows with none


def test_mean_ci_is_the_mean_of_finite_values_with_a_bootstrap_interval():
    values = np.array([0.0, 1.0, np.nan, 2.0, 3.0])
    mean, (lo, hi), n = stats.mean_ci(values, 500, np.random.default_rng(0))
    assert (mean, n) == (1.5, 4) and 0.0 <= lo < 1.5 < hi <= 3.0
    assert stats.mean_ci(np.array([np.nan]), 10, np.random.default_rng(0))[2] == 0
