"""The summary of a run as typed objects: what :func:`~xcv_batch.report.summarize.summarize` returns and every view
(``summary.md``, the terminal table, ``report.html``) reads.

``summary.json`` is the contract users read, so :meth:`Summary.to_dict` gives exactly its keys in its order: each
class lists its fields in the order of its JSON object (two exceptions say so: a method's values per metric sit
beside its ``ranks``, and the run's facts sit at the top level). Every number is a plain ``float``/``int`` or
``None`` (JSON has no NaN), and a CI is a two-element list ``[lo, hi]`` whose ends may be ``None``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..metrics.registry import metric_title

#: Version of summary.json's layout.
SUMMARY_SCHEMA = 2


# --- per metric -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankedMetric:
    """A quality metric that entered the rankings: how it is shown and ranked (``metrics`` in summary.json)."""

    label: str
    unit: str
    direction: str
    family: str
    #: images with a value for every ranked method
    n_images: int
    #: the methods with a value on at least one image, in run order
    methods: list[str]
    nemenyi_cd: Optional[float]
    #: its weight in the overall rank (0: reported, not in the rank)
    weight: float

    @property
    def title(self) -> str:
        """The label with its unit, for headers and axes."""
        return metric_title({"label": self.label, "unit": self.unit})


@dataclass(frozen=True)
class FriedmanTest:
    """Friedman's test over the images with a value for every method; ``skipped`` says why it was not run."""

    statistic: Optional[float]
    p: Optional[float]
    kendalls_w: Optional[float]
    n_images: int
    k: int
    reject: Optional[bool]
    skipped: Optional[str]


@dataclass(frozen=True)
class PairwiseTest:
    """Wilcoxon signed-rank test of two methods, Holm-adjusted over the metric's pairs."""

    a: str
    b: str
    n: int
    statistic: Optional[float]
    p: Optional[float]
    #: rank-biserial r of a − b
    effect_size: float
    better: Optional[str]
    p_holm: Optional[float]
    reject: Optional[bool]


@dataclass(frozen=True)
class NemenyiTest:
    alpha: float
    q_alpha: Optional[float]
    #: critical difference of mean ranks
    cd: Optional[float]


@dataclass(frozen=True)
class MetricTests:
    """The tests of one ranked metric (``tests`` in summary.json)."""

    n_images: int
    friedman: FriedmanTest
    pairwise: list[PairwiseTest]
    nemenyi: NemenyiTest


# --- per method -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricValues:
    """One method's values of one metric over the images."""

    median: Optional[float]
    ci95: list
    mean: Optional[float]
    n: int
    #: ok rows without a value
    n_missing: int
    direction: str


@dataclass(frozen=True)
class MetricRank:
    """One method's ranks on one metric."""

    mean_rank: Optional[float]
    mean_rank_ci95: list
    win_rate: Optional[float]
    n_images: int


@dataclass(frozen=True)
class MethodSummary:
    """One method: its overall rank, status counts, ranks per metric and values per metric.

    In summary.json the values per metric are keys of the method's object beside ``ranks`` (``methods.lime.
    sensitivity_max``), not a ``values`` object.
    """

    label: str
    mean_rank: Optional[float]
    mean_rank_ci95: list
    win_rate: Optional[float]
    n_ok: int
    n_error: int
    ranks: dict[str, MetricRank] = field(default_factory=dict)
    values: dict[str, MetricValues] = field(default_factory=dict)

    def to_dict(self) -> dict:
        plain = _fields(self)
        values = plain.pop("values")
        return {**plain, **values}


# --- control maps: each metric's power to reject them ---------------------------------------------------------------


@dataclass(frozen=True)
class ControlShare:
    """One real method against one control map on one metric, over the images where both have a value: the
    share of images on which the method is better by the metric's direction (with its bootstrap CI), and on which
    the control is."""

    share: Optional[float]
    ci95: list
    control_share: Optional[float]
    n_images: int


@dataclass(frozen=True)
class MetricPower:
    """A metric's power to tell real attributions from control maps, and whether it separates the methods at all.

    ``shares``: control → method → :class:`ControlShare`. ``beaten``: control → the methods it beats (better on more
    images than the method is). ``flagged_by``: the controls that beat at least half of the methods, most first.
    ``beaten_share``: for the first of them, the share of (image, beaten method) pairs on which the control is better
    (mean over images, bootstrap CI). ``tied_share``: the share of images whose methods' values tie (within
    ``tolerance`` of their largest magnitude), over ``n_tie_images`` images with at least two methods' values;
    ``tied``: above one half, so the metric is left out of the default rank."""

    label: str
    direction: str
    shares: dict[str, dict[str, ControlShare]]
    beaten: dict[str, list[str]]
    flagged_by: list[str]
    beaten_share: Optional[float]
    beaten_share_ci95: list
    tied_share: Optional[float]
    n_tie_images: int
    tied: bool


@dataclass(frozen=True)
class ControlPower:
    """``controls`` in summary.json: the control maps of the run, the real methods compared with them, per ranked
    metric its :class:`MetricPower`, the metrics flagged (by a control or by ties; ``--rank-on reliable`` ranks on
    the others) and the error rows of the controls (never among the methods' failures)."""

    controls: list[str]
    methods: list[str]
    tolerance: float
    metrics: dict[str, MetricPower]
    flagged: list[str]
    n_control_errors: int


# --- the run as a whole ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankOn:
    """The weights of the overall rank; ``chosen``: given with --rank-on rather than the default."""

    weights: dict[str, float]
    chosen: bool
    #: ``--rank-on reliable``: the default weights over the metrics that are not flagged (see ``controls``)
    reliable: bool = False


@dataclass(frozen=True)
class MetricPair:
    """Kendall's τ-b between the method orders two metrics give, mean over images."""

    a: str
    b: str
    tau: Optional[float]
    ci95: list
    n_images: int
    methods: list[str]
    #: both metrics enter the overall rank
    in_rank: bool


@dataclass(frozen=True)
class Concordance:
    """Kendall's W of the metrics in the rank over the methods they all rank, mean over images."""

    value: Optional[float]
    ci95: list
    n_images: int
    metrics: list[str]
    methods: list[str]


@dataclass(frozen=True)
class Agreement:
    """How well the ranked metrics agree on the order of the methods."""

    threshold: float
    metrics: list[str]
    #: mean τ, metrics × metrics (1 on the diagonal, None where undefined)
    matrix: list[list[Optional[float]]]
    pairs: list[MetricPair]
    kendalls_w: Concordance
    #: pairs of metrics in the rank whose mean τ is below the threshold
    disagreeing: list[list[str]]


@dataclass(frozen=True)
class MethodCost:
    """One method's cost: time, throughput and model passes (beside the rank, never in it)."""

    n_images: int
    attr_seconds_total: float
    seconds_per_image: Optional[float]
    images_per_second: Optional[float]
    passes_per_image: Optional[int]
    #: the passes in words, e.g. "50 forward"
    passes: Optional[str]
    forward_equivalents_per_image: Optional[float]
    forward_equivalents_per_second: Optional[float]
    share_of_run: Optional[float]


@dataclass(frozen=True)
class Cost:
    batch_size: Any
    forward_batch: Any
    device: Any
    workers: Any
    methods: dict[str, MethodCost]


@dataclass(frozen=True)
class DiagnosticImage:
    image_id: str
    value: float


@dataclass(frozen=True)
class Diagnostic:
    """A check of one method's own output (e.g. IG's completeness gap), reported, not ranked."""

    label: str
    method: str
    tolerance: float
    meaning: str
    n: int
    median: float
    max: float
    n_above: int
    #: the images above the tolerance, worst first (the first few; ``n_above`` counts them all)
    above: list[DiagnosticImage]


@dataclass(frozen=True)
class Failure:
    """An error row: which image, which method, what went wrong."""

    image_id: str
    method: str
    error: Optional[str]


@dataclass(frozen=True)
class ModelFacts:
    arch: Any = None
    weights: Any = None
    resolution: Any = None


@dataclass(frozen=True)
class SeedSettings:
    """Whether the job's settings are the seed report's, so that its Table I can stand beside ours."""

    matches: bool = False
    differences: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunFacts:
    """What the output directory says about the run; absent from a summary of bare rows."""

    out: Optional[str] = None
    job_name: Optional[str] = None
    fingerprint: Optional[str] = None
    model: ModelFacts = field(default_factory=ModelFacts)
    target: Optional[str] = None
    n_expected: Optional[int] = None
    #: every expected image × method has a row
    complete: bool = False
    n_missing_rows: Optional[int] = None
    seed_settings: SeedSettings = field(default_factory=SeedSettings)


@dataclass(frozen=True)
class Summary:
    """The rankings, CIs, tests, agreement, cost, diagnostics and failures of a run (see summarize.py)."""

    n_images: int
    n_boot: int
    #: how the resamples were drawn (report/stats.py's SCHEMES): ``auto`` resamples images below 50,000 counting
    #: images and draws each resample's means from their large-sample normal law from there on
    bootstrap_scheme: str
    seed: int
    alpha: float
    #: ranked quality metrics, in column order
    metrics: dict[str, RankedMetric]
    #: metric → why it was not ranked
    metrics_skipped: dict[str, str]
    methods: dict[str, MethodSummary]
    tests: dict[str, MetricTests]
    rank_on: RankOn
    agreement: Agreement
    cost: Cost
    diagnostics: dict[str, Diagnostic]
    failures: list[Failure]
    n_failed_images: int
    #: each metric's power to reject the control maps, and its ties (None: no metric ranked)
    controls: Optional[ControlPower] = None
    #: None for a summary of rows without their output directory
    run: Optional[RunFacts] = None
    schema: int = SUMMARY_SCHEMA

    @property
    def facts(self) -> RunFacts:
        """The run's facts, or empty ones (nothing known) for a summary of bare rows."""
        return self.run or RunFacts()

    def best_first(self) -> list[str]:
        """Methods best first (by overall mean rank; unranked last, in run order)."""
        methods = self.methods
        return sorted(methods, key=lambda m: (methods[m].mean_rank is None, methods[m].mean_rank or 0.0))

    def status_line(self) -> str:
        """``6 of 8 images (partial: …)``."""
        facts = self.facts
        state = "complete" if facts.complete else "partial: still running, interrupted or failed"
        of = f" of {facts.n_expected}" if facts.n_expected is not None else ""
        return f"{self.n_images}{of} images ({state})"

    def to_dict(self) -> dict:
        """The summary.json object: ``schema`` first, the run's facts last and at the top level."""
        plain = _fields(self)
        run = plain.pop("run")
        schema = plain.pop("schema")
        return {"schema": schema, **plain, **(run or {})}

    def to_json(self) -> str:
        """summary.json's text."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


# --- plain values ---------------------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` with plain Python numbers: numpy scalars become ``int``/``float``/``bool``, NaN and infinity
    ``None``, tuples lists; dataclasses are rebuilt field by field. A summary holds only such values, so it equals
    what its JSON reads back as."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(**{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _json_value(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _fields(value: Any) -> dict:
    """A dataclass as a dict in field order, its parts converted as well."""
    return {f.name: _json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
