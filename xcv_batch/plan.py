"""How much model work a job is: passes through the model per image and method, from the methods' settings alone.

Torch-free, so ``run --dry-run`` can show it and the progress can weigh a method's share before any model exists;
below the driver, so the report and a worker's probe read it without loading scheduling code.
Each method's count is the ``passes`` of its registration (methods/settings.py), following the method modules (every
perturbed copy is one row of a forward pass):

* Occlusion — one row per window, ``ceil((R − window) / stride) + 1`` windows per side, plus the clean image;
* Integrated Gradients — ``n_steps`` rows, each forward and backward (no row for the zero baseline);
* IG + SmoothGrad — ``nt_samples × n_steps`` rows, forward and backward;
* Guided Grad-CAM — one forward and two backwards (the plain one to the layer, the guided one to the input);
* LIME — ``num_samples`` forward rows;
* each enabled metric adds the rows its registration's ``passes`` counts (metrics/settings.py): Max-Sensitivity
  explains ``n_perturb_samples`` perturbed copies again (every count ``1 + n_perturb_samples`` times as large),
  infidelity ``n_perturb_samples + 1`` forwards, deletion and insertion ``n_steps + 1`` each, randomisation one more
  explanation on the randomised model.

Work is counted in forward-equivalents: a backward costs about two forwards (it computes gradients for both the
activations and, through them, the input), so a forward+backward row weighs 3.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from .config import Job
from .methods.registry import BACKWARD_COST, Passes, method_spec
from .metrics.registry import enabled_metrics

__all__ = ["BACKWARD_COST", "CLASSIFY", "Passes", "classify_passes", "explanation_copies", "explanation_passes",
           "format_duration", "method_passes", "total_work"]


def explanation_passes(method: str, settings, resolution: int) -> Passes:
    """One explanation of one image by ``method`` with ``settings``: its registered ``passes``."""
    try:
        spec = method_spec(method)
    except KeyError:
        raise ValueError(f"no pass count for method {method!r}") from None
    return spec.passes(settings, resolution, resolution)


def method_passes(job: Job) -> dict[str, Passes]:
    """Per method, the rows one image costs in this job: the explanation, then each enabled metric's (Max-Sensitivity
    and the quality metrics, as their registrations count them)."""
    metrics = enabled_metrics(job.sensitivity, job.metrics)
    counts = {}
    for name, settings in job.methods.items():
        once = explanation_passes(name, settings, job.model.resolution)
        total = once
        for spec, metric_settings in metrics:
            if spec.passes is not None:
                total = total + spec.passes(metric_settings, once)
        counts[name] = total
    return counts


def explanation_copies(job: Job) -> dict[str, int]:
    """Per method, the forward rows of one image that are its explanations' own copies: the explanation's, and those
    of the metrics that explain again (Max-Sensitivity, randomisation), found as the part of a metric's count that
    follows the explanation's. A method whose copies run a path of their own (incremental Occlusion) runs these
    along it; the metrics' other rows are ordinary forwards."""
    metrics = enabled_metrics(job.sensitivity, job.metrics)
    copies = {}
    for name, settings in job.methods.items():
        once = explanation_passes(name, settings, job.model.resolution)
        rows = once.forward
        for spec, metric_settings in metrics:
            if spec.passes is not None:
                rows += spec.passes(metric_settings, once).forward - spec.passes(metric_settings, Passes()).forward
        copies[name] = rows
    return copies


#: Rows every image costs once, whatever the methods: the forward that picks its target.
CLASSIFY = Passes(forward=1)


def classify_passes(methods: Iterable[str]) -> Passes:
    """The rows of the forward that picks an image's target: none when one of ``methods`` classifies in its first
    pass (its spec's ``classifies``: the engine takes the target from that pass when the batch fits one of its
    forward batches, as a run's batches do), else :data:`CLASSIFY`."""
    return Passes() if any(method_spec(name).classifies for name in methods) else CLASSIFY


def total_work(passes: Mapping[str, Passes]) -> float:
    """Forward-equivalents of one image over every method, its classification included."""
    return sum(p.work for p in passes.values()) + classify_passes(passes).work


def format_duration(seconds: float) -> str:
    """``0:03:07`` style, as progress bars show time; days spelled out when a run is that long."""
    seconds = max(0, int(math.ceil(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} d {clock}" if days else clock
