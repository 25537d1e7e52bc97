"""What every attribution method is: one class, one ``attribute`` call, batched over images and perturbations.

A method takes a batch of model inputs (already normalised), one target class and one seed per image, and returns
raw attributions of the same shape: never normalised, float32. Inside, it pushes its perturbed copies (occlusion
windows, IG steps, noise samples, LIME samples) through the model in chunks of at most ``forward_batch`` copies that
may span several images, so a chunk is full whatever the batch looks like. Results must not depend on
``forward_batch`` nor on which images share a batch (seeds are per image).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterator, Sequence

import torch

from ..model import Classifier


class AttributionMethod(ABC):
    name: ClassVar[str]
    settings_type: ClassVar[type]
    #: whether ``seeds`` change the result (SmoothGrad noise, LIME samples)
    stochastic: ClassVar[bool] = False

    def __init__(self, classifier: Classifier, settings, forward_batch: int = 64):
        if forward_batch < 1:
            raise ValueError(f"forward_batch must be ≥ 1, got {forward_batch}")
        self.classifier = classifier
        self.settings = settings
        self.forward_batch = forward_batch

    @abstractmethod
    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """(B, 3, H, W) model inputs on the classifier's device, (B,) int64 targets, B seeds → (B, 3, H, W) float32."""


def chunk_slices(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def target_outputs(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """outputs[i, targets[i]] for every row: the scalar each method explains."""
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)
