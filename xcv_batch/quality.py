"""The quality metrics a job asks for beyond Max-Sensitivity, evaluated per batch of maps.

Each metric group turns one method's maps of a batch into row columns (and a ``<group>_seconds`` cost column, so the
price of every metric is visible per image). The functions themselves live in faithfulness.py, randomisation.py and
localisation.py, and their directions are declared in metrics_info.py; this module only decides which run, with
which seeds, and on which model.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import torch

from .config import Job
from .device import synchronize
from .faithfulness import deletion_auc, infidelity, insertion_auc
from .localisation import localisation_metrics
from .methods import build_method
from .model import Classifier
from .randomisation import map_similarity, randomised_copy
from .seeding import derive_seed

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
        masks: torch.Tensor | None,
    ) -> dict[str, list[float | None]]:
        """Columns for the batch's rows: metric values and ``<group>_seconds`` (batch time ÷ images)."""
        config = self.job.metrics
        net, n = self.executed.net, len(image_ids)
        batch = self.forward_batch
        columns: dict[str, list[float | None]] = {}

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
        if masks is not None and self.wants_masks:
            timed("localisation", lambda: localisation_metrics(attributions, masks))
        return columns
