"""The protocol of a metric's implementation: built once per worker from a :class:`MetricContext`, then asked to
``evaluate`` one method's maps of one batch (a :class:`MapBatch`), returning its columns (an :class:`Evaluation`).

The runner (execution/metric_runner.py) times each call into the metric's ``<name>_seconds`` column, retries it with
a halved ``forward_batch`` when it runs out of device memory, and turns its values into row columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..models.classifier import Classifier

#: Why a value is missing, per cause; the explainer writes it into the row's ``note``.
EMPTY_MASK = "undefined: the mask is empty after resize and crop"
ALL_ZERO_MAP = "undefined: the map is all zero"


@dataclass
class MetricContext:
    """What a metric may use, the same for every batch of a worker.

    ``classifier`` is the model as built (the randomisation check re-initialises its blocks); ``executed`` the one
    passes run on (the fast copy, or ``classifier`` itself), and ``execution`` makes the same kind of copy of another
    classifier. ``methods`` are the built methods (by name) and ``method_settings`` the job's settings of every
    method; ``forward_batch`` is the copies per pass of a metric's own forwards; ``seed`` the job's seed.
    """

    classifier: Classifier
    executed: Classifier
    methods: Mapping[str, Any]
    method_settings: Mapping[str, Any]
    forward_batch: int
    seed: int
    execution: Callable[[Classifier], Classifier] = lambda classifier: classifier


@dataclass
class MapBatch:
    """One method's maps of a batch, with everything they were computed from.

    ``seeds`` are the method's seeds of the images; ``masks`` one (H, W) bool mask or None per image, or None when no
    image of the batch has one.
    """

    method_name: str
    method: Any
    inputs: torch.Tensor
    targets: torch.Tensor
    seeds: Sequence[int]
    image_ids: Sequence[str]
    attributions: torch.Tensor
    masks: Sequence[torch.Tensor | None] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass
class Evaluation:
    """A metric's result on a batch.

    ``columns``: column → (B,) values. A tensor's NaN becomes a missing value (None), explained by ``reasons`` where
    the metric knows why; a list is taken as it is (a NaN in it is noted as an overflow). ``reasons``: column → one
    reason or None per image. ``evaluated``: per image, whether the metric applies to it at all (False: its columns
    and its cost stay empty, as when the metric is off); None: every image.
    """

    columns: Mapping[str, torch.Tensor | Sequence[float | None]]
    reasons: Mapping[str, Sequence[str | None]] = field(default_factory=dict)
    evaluated: Sequence[bool] | None = None


class Metric:
    """Base of a metric's implementation; a subclass overrides :meth:`evaluate` (and :meth:`sized` when its passes
    are another object's, e.g. a method's).

    ``name`` is set from the spec when the runner builds it; ``forward_batch`` bounds the copies of one pass of its
    own forwards, and is what out-of-memory halving shrinks.
    """

    name: str = "metric"

    def __init__(self, settings: Any, context: MetricContext):
        self.settings = settings
        self.context = context
        self.forward_batch = context.forward_batch

    def evaluate(self, batch: MapBatch) -> Evaluation | None:
        """The metric on one method's maps of a batch; None when it does not apply to this batch at all."""
        raise NotImplementedError

    def sized(self, batch: MapBatch) -> Any:
        """What holds the ``forward_batch`` that bounds this metric's passes on ``batch`` (halved on out-of-memory)."""
        return self
