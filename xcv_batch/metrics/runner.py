"""The quality metrics a job asks for beyond Max-Sensitivity, evaluated per batch of maps.

Each metric group turns one method's maps of a batch into row columns (and a ``<group>_seconds`` cost column, so the
price of every metric is visible per image). The functions themselves live in faithfulness.py, randomisation.py,
localisation.py and complexity.py, and their directions are declared in metrics_info.py; this module only decides
which run, with which seeds, and on which model, and says why a value is missing where it knows.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import torch

from .complexity import complexity_metrics
from ..config import Job
from ..execution.device import synchronize
from .faithfulness import deletion_auc, infidelity, insertion_auc
from .localisation import localisation_metrics
from ..methods import build_method
from ..models.classifier import Classifier
from .randomisation import map_similarity, randomised_copy
from ..seeding import derive_seed

#: Why a value is missing, per cause; the worker writes it into the row's ``note``.
EMPTY_MASK = "undefined: the mask is empty after resize and crop"
ALL_ZERO_MAP = "undefined: the map is all zero"

#: Per-image reasons for missing values: column → one reason (or None) per image.
Reasons = dict[str, list[str | None]]


class QualityMetrics:
    """The job's quality metrics for one worker.

    ``classifier`` is the model as built (the randomisation check re-initialises its named blocks); ``executed`` is
    the one passes run on (the worker's fast copy, or ``classifier`` itself), and ``execution`` makes the same kind
    of copy of the randomised model. ``forward_batch`` is the copies per pass of the metrics' own forwards.
    """

    def __init__(
        self,
        job: Job,
        classifier: Classifier,
        methods: Mapping[str, object],
        forward_batch: int,
        executed: Classifier,
        execution: Callable[[Classifier], Classifier],
    ):
        self.job = job
        self.executed = executed
        self.forward_batch = forward_batch
        config = job.metrics
        self.randomised_methods: dict[str, object] = {}
        if config.randomisation is not None:
            # Built once per worker; seeded by the job, so every worker holds the same randomised weights.
            randomised = execution(randomised_copy(classifier, config.randomisation.depth, seed=job.seed))
            self.randomised_methods = {
                name: build_method(name, randomised, settings, methods[name].forward_batch)
                for name, settings in job.methods.items()
            }

    @property
    def wants_masks(self) -> bool:
        return self.job.metrics.localisation is not False

    def evaluate(
        self,
        method_name: str,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        seeds: Sequence[int],
        image_ids: Sequence[str],
        attributions: torch.Tensor,
        masks: Sequence[torch.Tensor | None] | None,
    ) -> tuple[dict[str, list[float | None]], Reasons]:
        """Columns for the batch's rows — metric values and ``<group>_seconds`` (batch time ÷ images) — and why a
        value is missing where the cause is known. ``masks``: one (H, W) bool mask or None per image, or None when
        no image of the batch has one."""
        config = self.job.metrics
        net, n = self.executed.net, len(image_ids)
        batch = self.forward_batch
        columns: dict[str, list[float | None]] = {}
        reasons: Reasons = {}

        def timed(group: str, compute) -> None:
            started = time.perf_counter()
            values = compute()
            synchronize(inputs.device)
            columns[f"{group}_seconds"] = [(time.perf_counter() - started) / n] * n
            for column, tensor in values.items():
                columns[column] = [None if v != v else float(v) for v in tensor.detach().cpu().tolist()]

        if config.infidelity is not None:
            c = config.infidelity
            noise_seeds = [derive_seed(self.job.seed, image_id, method_name, "infidelity") for image_id in image_ids]
            timed("infidelity", lambda: {"infidelity": infidelity(
                net, inputs, targets, attributions, noise_seeds, n_perturb_samples=c.n_perturb_samples,
                noise_std=c.noise_std, forward_batch=batch)})
        if config.deletion is not None:
            c = config.deletion
            timed("deletion", lambda: {"deletion_auc": deletion_auc(
                net, inputs, targets, attributions, n_steps=c.n_steps, substrate=c.substrate,
                blur_sigma=c.blur_sigma, forward_batch=batch)})
        if config.insertion is not None:
            c = config.insertion
            timed("insertion", lambda: {"insertion_auc": insertion_auc(
                net, inputs, targets, attributions, n_steps=c.n_steps, substrate=c.substrate,
                blur_sigma=c.blur_sigma, forward_batch=batch)})
        if self.randomised_methods:
            randomised = self.randomised_methods[method_name]
            timed("randomisation", lambda: map_similarity(
                attributions, randomised.attribute(inputs, targets, seeds).float()))
        if config.complexity is not None:
            timed("complexity", lambda: complexity_metrics(attributions, config.complexity.eps))
            for column in ("sparseness", "effective_complexity"):
                # NaN only for an all-zero map (see complexity.py)
                reasons[column] = [ALL_ZERO_MAP if v is None else None for v in columns[column]]
        if masks is not None and self.wants_masks:
            self._localise(timed, columns, reasons, attributions, masks)
        return columns, reasons

    @staticmethod
    def _localise(timed, columns: dict, reasons: Reasons, attributions: torch.Tensor,
                  masks: Sequence[torch.Tensor | None]) -> None:
        """Localisation of every image that has a mask. An image without one has no localisation (None, as in a run
        without masks, whatever its batch holds), so it never costs the rest of its batch their values; an empty
        mask gives NaN and says why."""
        height, width = attributions.shape[2:]
        no_mask = torch.zeros((height, width), dtype=torch.bool, device=attributions.device)
        stacked = torch.stack([no_mask if m is None else m.to(attributions.device) for m in masks])
        timed("localisation", lambda: localisation_metrics(attributions, stacked))
        for column in ("pointing_game", "relevance_mass", "relevance_rank", "localisation_seconds"):
            columns[column] = [None if m is None else v for v, m in zip(columns[column], masks)]
        why = [EMPTY_MASK if m is not None and not bool(m.any()) else None for m in masks]
        for column in ("pointing_game", "relevance_mass", "relevance_rank"):
            reasons[column] = why
