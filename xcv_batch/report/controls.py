"""Would a metric notice a useless map? Each metric's power to rank real attributions above the control maps, and
whether it separates the methods at all.

A control map knows nothing about the model (``MethodSpec.control``: seeded noise, an edge detector, a centred
Gaussian). Per metric, per real method and control, over the images where both have a value: the share of images on
which the method is better by the metric's direction (by more than :data:`TIE_TOLERANCE`: closer values tie), with
a percentile-bootstrap CI over images (all pairs of one metric share the resamples). A control *beats* a method when
it is the better of the two on more images than the method is (a tie is neither's). A metric is **flagged** when some control beats at least half of the real methods:
it ranks a map that knows nothing above real attributions, so its rank says little here (Adebayo et al. 2018 found an
edge detector passing several saliency evaluations).

A metric is flagged too when, on more than half of the images where at least two methods have a value, every
method's value ties with the others' (within :data:`TIE_TOLERANCE` of their largest magnitude): it cannot separate
anything, and the default rank leaves it out (effective complexity at its default eps counts nearly every pixel of
every map).

Controls never enter the method ranking: summarize ranks the real methods' rows alone.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from . import stats
from ..metrics.registry import metric_info
from .summary_types import ControlPower, ControlShare, MetricPower

#: Values within this fraction of their largest magnitude tie: effective complexity's 4,095 and 4,096 of 4,096
#: pixels differ by 0.02 %, far below what separates two maps.
TIE_TOLERANCE = 1e-3
#: A metric whose methods tie on more than this share of images separates nothing.
TIED_SHARE = 0.5


def metric_power_of(metric: str, direction: str, values: np.ndarray, methods: Sequence[str],
                    controls: Sequence[str], n_boot: int, seed: int, index: int,
                    scheme: str = stats.AUTO) -> MetricPower:
    """The power of the ``index``-th ranked metric (its ``direction``) to reject the ``controls``, from its values on
    the ok rows: ``values`` is (images × [*methods, *controls]); ties are among the real methods alone."""
    real, control = values[:, :len(methods)], values[:, len(methods):]
    rng = np.random.default_rng([seed, 7877, index])
    return metric_power(metric, direction, real, control, methods, controls, n_boot, rng, scheme)


def control_power(powers: Mapping[str, MetricPower], methods: Sequence[str], controls: Sequence[str],
                  n_control_errors: int = 0) -> ControlPower:
    """The :class:`ControlPower` of the ranked metrics' powers (:func:`metric_power_of`), and which are flagged."""
    flagged = [metric for metric, power in powers.items() if power.tied or power.flagged_by]
    return ControlPower(controls=list(controls), methods=list(methods), tolerance=TIE_TOLERANCE, metrics=dict(powers),
                        flagged=flagged, n_control_errors=int(n_control_errors))


def better(a: np.ndarray, b: np.ndarray, direction: str, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """1.0 where ``a`` is better than ``b`` by ``direction`` (by more than ``tolerance`` × the larger magnitude: closer
    values tie), 0.0 where not, NaN where either is missing."""
    with np.errstate(invalid="ignore"):
        margin = (a - b) if direction == "higher" else (b - a)
        wins = margin > tolerance * np.maximum(np.abs(a), np.abs(b))
    return np.where(np.isfinite(a) & np.isfinite(b), wins.astype(float), np.nan)


def wins_and_losses(a: np.ndarray, b: np.ndarray, direction: str,
                    tolerance: float = TIE_TOLERANCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Booleans: where ``a`` is better than ``b``, where ``b`` is better than ``a`` (as :func:`better` says, both from
    one margin) and where both have a value; neither wins where either is missing."""
    valid = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore"):
        margin = (a - b) if direction == "higher" else (b - a)
        threshold = tolerance * np.maximum(np.abs(a), np.abs(b))
        return (margin > threshold) & valid, (-margin > threshold) & valid, valid


def metric_power(metric: str, direction: str, real: np.ndarray, control: np.ndarray, methods: Sequence[str],
                 controls: Sequence[str], n_boot: int, rng: np.random.Generator,
                 scheme: str = stats.AUTO) -> MetricPower:
    """One metric's :class:`MetricPower` from its (images × methods) and (images × controls) values."""
    k = len(methods)
    pairs = [(j, c) for c in range(len(controls)) for j in range(k)]
    # Booleans (images, pairs), pair (j, c) in column c·k + j as ``pairs`` orders them, one control against every
    # method at a time: a million images × 15 pairs take 15 MB each instead of 120 MB of floats.
    shape = (len(real), len(pairs))
    method_wins, control_wins, valid = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool)
    for c in range(len(controls)):
        columns = slice(c * k, (c + 1) * k)
        method_wins[:, columns], control_wins[:, columns], valid[:, columns] = wins_and_losses(
            real, control[:, [c]], direction)

    def with_gaps(wins: np.ndarray, index) -> np.ndarray:
        """1.0 / 0.0 where both have a value, NaN where not (as :func:`better` gives them)."""
        return np.where(valid[:, index], wins[:, index], np.nan)

    # Shared resamples over the images where every method and control has a value; a pair's own images otherwise.
    complete = valid.all(axis=1) if pairs else np.zeros(len(real), bool)
    n_complete = int(complete.sum())
    boot = (stats.bootstrap_means([method_wins[complete].astype(float)], n_boot, rng, scheme)[0]
            if n_complete else None)
    counts, method_counts, control_counts = valid.sum(axis=0), method_wins.sum(axis=0), control_wins.sum(axis=0)
    shares: dict[str, dict[str, ControlShare]] = {name: {} for name in controls}
    beaten: dict[str, list[str]] = {name: [] for name in controls}
    for index, (j, c) in enumerate(pairs):
        n = int(counts[index])
        share = float(method_counts[index]) / n if n else None
        control_share = float(control_counts[index]) / n if n else None
        if boot is not None and n_complete == n:
            ci = list(stats.percentile_ci(boot[:, index]))
        else:
            _, ci, _ = stats.mean_ci(with_gaps(method_wins, index), n_boot, rng, scheme=scheme)
        shares[controls[c]][methods[j]] = ControlShare(share=share, ci95=list(ci), control_share=control_share,
                                                       n_images=n)
        if n and control_share > share:
            beaten[controls[c]].append(methods[j])
    half = len(methods) / 2
    flagged_by = sorted((name for name in controls if methods and len(beaten[name]) >= half),
                        key=lambda name: -len(beaten[name]))
    beaten_share, beaten_ci = None, [None, None]
    if flagged_by:
        c = list(controls).index(flagged_by[0])
        columns = [list(methods).index(m) for m in beaten[flagged_by[0]]]
        chosen = [pairs.index((j, c)) for j in columns]
        counted = valid[:, chosen].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN where no beaten method has a value
            per_image = np.where(counted > 0, control_wins[:, chosen].sum(axis=1) / counted, np.nan)
        beaten_share, beaten_ci, _ = stats.mean_ci(per_image, n_boot, rng, scheme=scheme)
        beaten_ci = list(beaten_ci)
    tied_share, n_tie_images = tie_share(real)
    info = metric_info(metric)
    return MetricPower(label=info.label, direction=direction, shares=shares, beaten=beaten, flagged_by=flagged_by,
                       beaten_share=beaten_share, beaten_share_ci95=beaten_ci, tied_share=tied_share,
                       n_tie_images=n_tie_images, tied=tied_share is not None and tied_share > TIED_SHARE)


def tie_share(values: np.ndarray, tolerance: float = TIE_TOLERANCE) -> tuple[float | None, int]:
    """The share of images (rows with at least two finite values) whose finite values all lie within ``tolerance``
    × their largest magnitude of each other, and how many such images there are."""
    finite = np.isfinite(values)
    usable = finite.sum(axis=1) >= 2
    if not usable.any():
        return None, 0
    rows, present = values[usable], finite[usable]
    high = np.where(present, rows, -np.inf).max(axis=1)
    low = np.where(present, rows, np.inf).min(axis=1)
    scale = np.where(present, np.abs(rows), 0.0).max(axis=1)
    tied = (high - low) <= tolerance * scale
    return float(tied.mean()), int(usable.sum())


# --- in words -------------------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}"


def control_sentences(power: ControlPower | None) -> list[str]:
    """One sentence per flagged metric (a control beats at least half of the methods on it, or it ties them), or one
    saying that every metric rejects the controls; none without ranked metrics."""
    if power is None or not power.metrics:
        return []
    lines = []
    n_methods = len(power.methods)
    for info in power.metrics.values():
        if info.tied:
            lines.append(f"{info.label} ties the methods on {_percent(info.tied_share)} % of {info.n_tie_images} "
                         f"images (values within {100 * power.tolerance:g} % of each other): it separates nothing "
                         "here, so it is left out of the default rank.")
        if info.flagged_by:
            control = info.flagged_by[0]
            lo, hi = info.beaten_share_ci95
            also = [f"`{name}` above {len(info.beaten[name])}" for name in info.flagged_by[1:]]
            lines.append(f"{info.label} ranks `{control}` above {len(info.beaten[control])} of {n_methods} method"
                         f"{'s' if n_methods != 1 else ''} on {_percent(info.beaten_share)} % "
                         f"[{_percent(lo)}, {_percent(hi)}] of images"
                         + (f" ({', '.join(also)} too)" if also else "")
                         + ": it does not separate attributions from a map blind to the model here.")
    if power.controls and not power.flagged:
        listed = ", ".join(f"`{name}`" for name in power.controls)
        lines.append(f"Every metric ranks most methods above each control map ({listed}).")
    if power.n_control_errors:
        lines.append(f"{power.n_control_errors} control map rows failed (not counted above).")
    return lines
