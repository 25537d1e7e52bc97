"""What every attribution method is: one class, one ``attribute`` call, batched over images and perturbations.

A method takes a batch of model inputs (already normalised), one target class and one seed per image, and returns
raw attributions of the same shape: never normalised, float32. Inside, it pushes its perturbed copies (occlusion
windows, IG steps, noise samples, LIME samples) through the model in chunks of at most ``forward_batch`` copies that
may span several images, so a chunk is full whatever the batch looks like. Results must not depend on
``forward_batch`` nor on which images share a batch (seeds are per image).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Iterator, Sequence

import torch

from ..models.classifier import Classifier
from .registry import spec_of_class


class AttributionMethod(ABC):
    """A subclass is registered by a ``MethodSpec`` in ``methods/settings.py`` that names it as its implementation;
    the spec sets these class attributes when the subclass is defined (a class no spec names sets its own)."""

    name: ClassVar[str]
    settings_type: ClassVar[type]
    #: whether ``seeds`` change the result (SmoothGrad noise, LIME samples)
    stochastic: ClassVar[bool] = False
    #: whether its passes differentiate the model (a forward batch then also holds activations for the backward)
    differentiates: ClassVar[bool] = False
    #: whether it is a control map, blind to the model (its map is a function of the image alone)
    control: ClassVar[bool] = False
    #: whether its first pass can stand in for the engine's classifying forward (:meth:`attribute_classifying`)
    classifies: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        spec = spec_of_class(cls.__module__, cls.__qualname__)
        if spec is not None:
            spec.bind(cls)

    def __init__(self, classifier: Classifier, settings, forward_batch: int = 64):
        if forward_batch < 1:
            raise ValueError(f"forward_batch must be ≥ 1, got {forward_batch}")
        self.classifier = classifier
        self.settings = settings
        self.forward_batch = forward_batch
        #: set by a progress tally while a call runs: receives the rows (perturbed copies) finished on a path that
        #: runs no forward of ``classifier.net`` (whose hook counts every other path's rows)
        self.rows_listener: Callable[[int], None] | None = None
        #: True while the method runs passes for itself (a probe): progress does not count them as the images' work
        self.probing = False

    def report_rows(self, rows: int) -> None:
        """``rows`` more copies are done on a path the model's forward hook cannot see (incremental Occlusion's
        crops, a long computation without any forward): progress then moves while the call runs."""
        if self.rows_listener is not None and rows > 0:
            self.rows_listener(rows)

    def row_probe(self, image: torch.Tensor, rows: int) -> tuple[str, Callable[[], None] | None]:
        """For the dry run's probe (of a method whose spec sets ``own_path``): the path the method will take on inputs
        like ``image`` (1, C, H, W), and a step that runs ``rows`` of its copies along it, or None when its copies
        are ordinary passes of the model."""
        return "forward passes", None

    @abstractmethod
    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """(B, 3, H, W) model inputs on the classifier's device, (B,) int64 targets, B seeds → (B, 3, H, W) float32."""

    def classifies_batch(self, images: int) -> bool:
        """Whether :meth:`attribute_classifying` on ``images`` images makes the engine's classifying forward itself:
        one forward of all of them at once, as they are, on :attr:`classifier` (a method whose spec sets
        ``classifies`` says when; the others never do)."""
        return False

    def attribute_classifying(
        self, inputs: torch.Tensor, seeds: Sequence[int], pick: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``attribute`` with targets the engine picks from the outputs of the method's first pass: that pass is one
        forward of ``inputs`` on :attr:`classifier`, ``pick`` gets its (B, classes) outputs (detached) and returns
        the (B,) targets to explain. Only where :meth:`classifies_batch` says so."""
        raise NotImplementedError(f"{self.name} does not classify in its first pass")

    def diagnostics(
        self, inputs: torch.Tensor, targets: torch.Tensor, attributions: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, str]]:
        """Per-image checks of the method's own output, as row columns: name → ((B,) values, why a value can be NaN).
        Diagnostics are reported, never ranked; most methods have none. Each column is declared in the method's spec
        (``MethodSpec.diagnostics``: its label, tolerance and meaning)."""
        return {}

    def row_columns(self) -> dict[str, str | None]:
        """String columns the rows of the last ``attribute`` call carry (how it ran, e.g. Occlusion's path); each is
        a column of the row contract (:data:`xcv_batch.output.layout.ROW_COLUMNS`), null on other methods' rows."""
        return {}


def chunk_slices(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``, as few as possible and of equal length ±1.

    Balanced rather than ``size, size, …, remainder``: 520 rows at 64 go as nine chunks of 57–58, not eight of 64
    and one of 8, whose small forward pass would run far below the device's throughput (on a GPU a chunk of 8 costs
    about as much as one of 64).
    """
    if size < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {size}")
    n_chunks = -(-total // size)
    base, extra = divmod(total, max(n_chunks, 1))
    start = 0
    for index in range(n_chunks):
        stop = start + base + (1 if index < extra else 0)
        yield slice(start, stop)
        start = stop


def target_outputs(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """outputs[i, targets[i]] for every row: the scalar each method explains."""
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)
