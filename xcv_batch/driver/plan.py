"""How much model work a job is: passes through the model per image and method, from the methods' settings alone.

Torch-free, so ``run --dry-run`` can show it and the progress can weigh a method's share before any model exists.
Each method's count is the ``passes`` of its registration (methods/settings.py), following the method modules (every
perturbed copy is one row of a forward pass):

* Occlusion — one row per window, ``ceil((R − window) / stride) + 1`` windows per side, plus the clean image;
* Integrated Gradients — ``n_steps`` rows, each forward and backward (no row for the zero baseline);
* IG + SmoothGrad — ``nt_samples × n_steps`` rows, forward and backward;
* Guided Grad-CAM — one forward and two backwards (the plain one to the layer, the guided one to the input);
* LIME — ``num_samples`` forward rows;
* Max-Sensitivity explains ``n_perturb_samples`` perturbed copies of each image again, so with it every count is
  ``1 + n_perturb_samples`` times as large (Φ(x) itself is the map already computed);
* quality metrics add their own rows: infidelity ``n_perturb_samples + 1`` forwards, deletion and insertion
  ``n_steps + 1`` each, randomisation one more explanation on the randomised model.

Work is counted in forward-equivalents: a backward costs about two forwards (it computes gradients for both the
activations and, through them, the input), so a forward+backward row weighs 3.
"""

from __future__ import annotations

import math
from typing import Mapping

from ..config import Job
from ..methods.registry import BACKWARD_COST, Passes, method_spec

__all__ = ["BACKWARD_COST", "CLASSIFY", "Passes", "explanation_passes", "format_duration", "method_passes",
           "total_work"]


def explanation_passes(method: str, settings, resolution: int) -> Passes:
    """One explanation of one image by ``method`` with ``settings``: its registered ``passes``."""
    try:
        spec = method_spec(method)
    except KeyError:
        raise ValueError(f"no pass count for method {method!r}") from None
    return spec.passes(settings, resolution, resolution)


def method_passes(job: Job) -> dict[str, Passes]:
    """Per method, the rows one image costs in this job: the explanation, its Max-Sensitivity, its quality metrics."""
    counts = {}
    for name, settings in job.methods.items():
        once = explanation_passes(name, settings, job.model.resolution)
        total = once.times(1 + (job.sensitivity.n_perturb_samples if job.sensitivity is not None else 0))
        counts[name] = total + _metric_passes(job, once)
    return counts


def _metric_passes(job: Job, explanation: Passes) -> Passes:
    metrics = job.metrics
    forward = 0
    if metrics.infidelity is not None:
        forward += metrics.infidelity.n_perturb_samples + 1
    for curve in (metrics.deletion, metrics.insertion):
        if curve is not None:
            forward += curve.n_steps + 1
    extra = explanation if metrics.randomisation is not None else Passes()
    return Passes(forward=forward) + extra


#: Rows every image costs once, whatever the methods: the forward that picks its target.
CLASSIFY = Passes(forward=1)


def total_work(passes: Mapping[str, Passes]) -> float:
    """Forward-equivalents of one image over every method, its classification included."""
    return sum(p.work for p in passes.values()) + CLASSIFY.work


def format_duration(seconds: float) -> str:
    """``0:03:07`` style, as progress bars show time; days spelled out when a run is that long."""
    seconds = max(0, int(math.ceil(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} d {clock}" if days else clock
