"""Settings of each attribution method, with the seed report's values as defaults.

Kept apart from the method code (and free of torch) so that validating a job file is cheap. Each ``check`` raises
``ConfigError`` with a key relative to the method; the job loader prefixes ``methods.<name>.``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from ..errors import ConfigError


def _positive(key: str, value: int | float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be > 0, got {value}")


@dataclass(frozen=True)
class OcclusionSettings:
    """Captum ``Occlusion`` with a square window over all three channels (seed: 3×15×15, stride 3×8×8)."""

    window: int = 15
    stride: int = 8
    baseline: float = 0.0  # in model-input (normalised) space: 0 is the dataset mean colour, the seed's grey patch
    # Exact incremental inference (each copy recomputes only what its window can change; same maps up to rounding):
    # auto runs it where the layers' FLOPs predict a worthwhile saving, true wherever the model can be lowered.
    incremental: Union[Literal["auto"], bool] = "auto"

    def check(self) -> None:
        _positive("window", self.window)
        _positive("stride", self.stride)
        if self.stride > self.window:
            # Captum refuses it too: pixels between windows would never be occluded.
            raise ConfigError("stride", f"must be ≤ window ({self.window}), got {self.stride}")
        if not (isinstance(self.incremental, bool) or self.incremental == "auto"):
            raise ConfigError("incremental", f"must be auto, true or false, got {self.incremental!r}")


IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


@dataclass(frozen=True)
class IntegratedGradientsSettings:
    """Captum ``IntegratedGradients`` from a zero baseline (seed: 200 steps, Gauss-Legendre)."""

    n_steps: int = 200
    method: Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"] = (
        "gausslegendre"
    )

    def check(self) -> None:
        _positive("n_steps", self.n_steps)
        _check_quadrature(self.method, self.n_steps)


def _check_quadrature(method: str, n_steps: int) -> None:
    if method.startswith("riemann") and n_steps < 2:
        raise ConfigError("n_steps", f"must be ≥ 2 for the {method} rule, got {n_steps}")


@dataclass(frozen=True)
class IGSmoothGradSettings:
    """Captum ``NoiseTunnel(IntegratedGradients)`` (seed: 10 samples, smoothgrad_sq, stdev 1.0 absolute, 50 steps)."""

    nt_samples: int = 10
    nt_type: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = "smoothgrad_sq"
    stdevs: float = 1.0  # absolute, in model-input (normalised) space, as Captum
    n_steps: int = 50
    method: Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"] = (
        "gausslegendre"
    )

    def check(self) -> None:
        _positive("nt_samples", self.nt_samples)
        _positive("n_steps", self.n_steps)
        _check_quadrature(self.method, self.n_steps)
        if self.stdevs < 0:
            raise ConfigError("stdevs", f"must be ≥ 0, got {self.stdevs}")


@dataclass(frozen=True)
class GuidedGradCamSettings:
    """Captum ``GuidedGradCam``; ``layer: auto`` is ResNet ``layer4`` / the last ReLU of a VGG's features."""

    layer: str = "auto"
    interpolate_mode: Literal["nearest", "bilinear"] = "nearest"  # Captum's default is nearest


@dataclass(frozen=True)
class LimeSettings:
    """The ``lime`` package's ``LimeImageExplainer.explain_instance`` defaults.

    ``hide_color: mean`` is lime's ``hide_color=None`` (each superpixel takes its mean colour); a number is a value in
    model-input space. The surrogate is lime's: weighted Ridge(alpha=1) with intercept, kernel
    ``sqrt(exp(-d²/width²))`` on the cosine distance of the binary sample rows.
    """

    num_samples: int = 1000
    segmentation: Literal["quickshift", "slic"] = "quickshift"
    hide_color: Union[Literal["mean"], float] = "mean"
    kernel_width: float = 0.25
    alpha: float = 1.0
    # quickshift (lime's SegmentationAlgorithm defaults)
    kernel_size: float = 4.0
    max_dist: float = 200.0
    ratio: float = 0.2
    # slic
    n_segments: int = 50
    compactness: float = 10.0

    def check(self) -> None:
        _positive("num_samples", self.num_samples)
        _positive("kernel_width", self.kernel_width)
        _positive("kernel_size", self.kernel_size)
        _positive("max_dist", self.max_dist)
        _positive("n_segments", self.n_segments)
        _positive("compactness", self.compactness)
        if self.alpha < 0:
            raise ConfigError("alpha", f"must be ≥ 0, got {self.alpha}")
        if not 0 <= self.ratio <= 1:
            raise ConfigError("ratio", f"must be in [0, 1], got {self.ratio}")


METHOD_SETTINGS: dict[str, type] = {
    "occlusion": OcclusionSettings,
    "integrated_gradients": IntegratedGradientsSettings,
    "ig_smoothgrad": IGSmoothGradSettings,
    "guided_gradcam": GuidedGradCamSettings,
    "lime": LimeSettings,
}
