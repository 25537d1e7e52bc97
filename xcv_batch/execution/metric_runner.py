"""The runner: every enabled metric, in registration order, on one method's maps of a batch → row columns.

Each metric is built once per worker (:meth:`MetricSpec.build`) and evaluated per batch; the runner adds its cost
column ``<name>_seconds`` (the batch's time for it ÷ its images, so the price of every metric is visible per image),
retries a call that ran out of device memory with a halved ``forward_batch``, and collects why values are missing.
Which metrics exist and what they write is the registry's (metrics/registry.py, metrics/settings.py); this module only
runs them, here beside the device tools it uses, so that the metrics package never imports the execution.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch

from ..metrics.base import MapBatch, MetricContext
from ..metrics.registry import enabled_metrics
from .device import HalveOnOutOfMemory, synchronize

#: Per-image reasons for missing values: column → one reason (or None) per image.
Reasons = dict[str, list[str | None]]


class MetricRunner:
    """The enabled metrics of a job, built for one worker."""

    def __init__(self, context: MetricContext, sensitivity: Any, metrics: Mapping[str, Any],
                 oom: HalveOnOutOfMemory | None = None):
        self.context = context
        self.oom = oom or HalveOnOutOfMemory()
        self.specs = enabled_metrics(sensitivity, metrics)
        self.metrics = [(spec, spec.build(settings, context)) for spec, settings in self.specs]

    @property
    def wants_masks(self) -> bool:
        """Whether an enabled metric reads ground-truth masks."""
        return any(spec.uses_masks for spec, _ in self.specs)

    def evaluate(self, batch: MapBatch) -> tuple[dict[str, list[float | None]], Reasons]:
        """Columns for the batch's rows — metric values and costs — and why a value is missing where it is known."""
        n = len(batch)
        columns: dict[str, list[float | None]] = {}
        reasons: Reasons = {}
        for spec, metric in self.metrics:
            started = time.perf_counter()
            evaluation = self.oom.run(metric.sized(batch), lambda: metric.evaluate(batch))
            if evaluation is None:
                continue
            synchronize(batch.inputs.device)
            seconds = (time.perf_counter() - started) / n
            evaluated = evaluation.evaluated or [True] * n
            columns[spec.cost_column] = [seconds if e else None for e in evaluated]
            for column, values in evaluation.columns.items():
                if isinstance(values, torch.Tensor):
                    values = [None if v != v else float(v) for v in values.detach().cpu().tolist()]
                columns[column] = [v if e else None for v, e in zip(values, evaluated)]
            reasons.update({column: list(why) for column, why in evaluation.reasons.items()})
        return columns, reasons
