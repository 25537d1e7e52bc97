"""Settings of each attribution method, with the seed report's values as defaults, and each method's registration.

Kept apart from the method code (and free of torch) so that validating a job file is cheap. Each ``check`` raises
``ConfigError`` with a key relative to the method; the job loader prefixes ``methods.<name>.``. Beside each settings
class, one :class:`~xcv_batch.methods.registry.MethodSpec` registers the method: its name, label, passes per image,
whether it differentiates the model or is stochastic, where its (torch) implementation lives, and its traits that
other modules act on (signed maps, diagnostics columns, checks against the job and the model, keys left out of the
fingerprint), so that none of them names a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Union

from ..errors import ConfigError
from .registry import DiagnosticInfo, MethodSpec, Passes, RegistryView, register


def _positive(key: str, value: int | float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be > 0, got {value}")


@dataclass(frozen=True)
class OcclusionSettings:
    """Captum ``Occlusion`` with a square window over all three channels (seed: 3×15×15, stride 3×8×8)."""

    window: int = 15  # side of the square patch, in pixels of the model input
    stride: int = 8  # pixels the patch moves between windows (≤ window, so that every pixel is occluded)
    baseline: float = 0.0  # in model-input (normalised) space: 0 is the dataset mean colour, the seed's grey patch
    #: Exact incremental inference (each copy recomputes only what its window can change; same maps up to rounding):
    #: auto runs the path a short probe times faster on the run's device (once per worker, size, window grid and
    #: batch; skipped where the FLOPs rule incremental out), true wherever the model can be lowered (a warning if it
    #: is slower there).
    incremental: Union[Literal["auto"], bool] = "auto"

    def check(self) -> None:
        _positive("window", self.window)
        _positive("stride", self.stride)
        if self.stride > self.window:
            # Captum refuses it too: pixels between windows would never be occluded.
            raise ConfigError("stride", f"must be ≤ window ({self.window}), got {self.stride}")
        if not (isinstance(self.incremental, bool) or self.incremental == "auto"):
            raise ConfigError("incremental", f"must be auto, true or false, got {self.incremental!r}")


def occlusion_windows(resolution: int, window: int, stride: int) -> int:
    """Windows along one side: Captum's starts 0, s, 2s, … up to the first ≥ R − window."""
    return -(-(resolution - window) // stride) + 1


def _window_fits_resolution(settings: OcclusionSettings, job) -> None:
    if settings.window > job.model.resolution:
        raise ConfigError(
            "methods.occlusion.window", f"must be ≤ model.resolution ({job.model.resolution}), got {settings.window}"
        )


register(MethodSpec(
    name="occlusion", settings=OcclusionSettings, label="Occlusion", implementation=".occlusion:Occlusion",
    oracle=".oracles:captum_occlusion", signed=True,
    check_job=_window_fits_resolution,
    # Incremental occlusion changes how the scores are computed, not what they are (equal to the full forwards up
    # to float rounding, as batching is): not fingerprinted, so runs made before it existed still resume.
    unhashed=("incremental",),
    own_path=True,
    # one row per window, plus the clean image
    passes=lambda s, height, width: Passes(
        forward=occlusion_windows(height, s.window, s.stride) * occlusion_windows(width, s.window, s.stride) + 1),
))


@dataclass(frozen=True)
class IntegratedGradientsSettings:
    """Captum ``IntegratedGradients`` from a zero baseline (seed: 200 steps, Gauss-Legendre)."""

    n_steps: int = 200  # points on the path from the baseline to the image, one forward+backward each
    #: Captum's quadrature rule over those points (riemann_* rules need n_steps ≥ 2).
    method: Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"] = (
        "gausslegendre"
    )

    def check(self) -> None:
        _positive("n_steps", self.n_steps)
        _check_quadrature(self.method, self.n_steps)


register(MethodSpec(
    name="integrated_gradients", settings=IntegratedGradientsSettings, label="Integrated Gradients",
    implementation=".integrated_gradients:IntegratedGradients", differentiates=True,
    oracle=".oracles:captum_integrated_gradients", signed=True,
    # Sundararajan et al. 2017 check completeness and raise the step count until the sum is within 5 %.
    diagnostics=(DiagnosticInfo(
        "ig_completeness_gap", "IG completeness gap", 0.05,
        "|Σ attribution − (f(x) − f(baseline))| ÷ |f(x) − f(baseline)|: above the tolerance, n_steps is too few"),),
    passes=lambda s, height, width: Passes(forward_backward=s.n_steps),  # no row for the zero baseline
))


def _check_quadrature(method: str, n_steps: int) -> None:
    if method.startswith("riemann") and n_steps < 2:
        raise ConfigError("n_steps", f"must be ≥ 2 for the {method} rule, got {n_steps}")


@dataclass(frozen=True)
class IGSmoothGradSettings:
    """Captum ``NoiseTunnel(IntegratedGradients)`` (seed: 10 samples, smoothgrad_sq, stdev 1.0 absolute, 50 steps)."""

    nt_samples: int = 10  # noisy copies of the image, each explained by Integrated Gradients
    #: How the copies' maps combine: smoothgrad (mean), smoothgrad_sq (mean of squares), vargrad (variance).
    nt_type: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = "smoothgrad_sq"
    stdevs: float = 1.0  # Gaussian noise std, absolute, in model-input (normalised) space, as Captum
    n_steps: int = 50  # Integrated Gradients' points per noisy copy
    #: Integrated Gradients' quadrature rule (riemann_* rules need n_steps ≥ 2).
    method: Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"] = (
        "gausslegendre"
    )

    def check(self) -> None:
        _positive("nt_samples", self.nt_samples)
        _positive("n_steps", self.n_steps)
        _check_quadrature(self.method, self.n_steps)
        if self.stdevs < 0:
            raise ConfigError("stdevs", f"must be ≥ 0, got {self.stdevs}")


register(MethodSpec(
    name="ig_smoothgrad", settings=IGSmoothGradSettings, label="IG + SmoothGrad",
    implementation=".ig_smoothgrad:IGSmoothGrad", differentiates=True, stochastic=True,
    # smoothgrad averages signed maps; smoothgrad_sq and vargrad average squares
    signed=lambda s: s.get("nt_type", IGSmoothGradSettings.nt_type) == "smoothgrad",
    passes=lambda s, height, width: Passes(forward_backward=s.nt_samples * s.n_steps),
))


@dataclass(frozen=True)
class GuidedGradCamSettings:
    """Captum ``GuidedGradCam``; ``layer: auto`` is ResNet ``layer4`` / the last ReLU of a VGG's features."""

    #: The module (a name from the model's named_modules(), e.g. layer4) whose output the CAM weighs; auto: ResNet
    #: layer4, VGG the last ReLU of its features.
    layer: str = "auto"
    interpolate_mode: Literal["nearest", "bilinear"] = "nearest"  # the CAM's upsampling to the input; Captum: nearest


register(MethodSpec(
    name="guided_gradcam", settings=GuidedGradCamSettings, label="Guided Grad-CAM",
    implementation=".guided_gradcam:GuidedGradCam", differentiates=True,
    oracle=".oracles:captum_guided_gradcam", signed=True,
    check_model=".guided_gradcam:check_layer",
    # its ReLUs read the guided-backprop switch at backward time: a compiled backward would keep one setting
    compilable=False,
    # its forward of the images is the one that picks their targets: the engine runs no forward of its own then
    classifies=True,
    # one forward and two backwards: the plain one to the layer, the guided one to the input
    passes=lambda s, height, width: Passes(forward_backward=1, extra_backward=1),
))


@dataclass(frozen=True)
class LimeSettings:
    """The ``lime`` package's ``LimeImageExplainer.explain_instance`` defaults.

    ``hide_color: mean`` is lime's ``hide_color=None`` (each superpixel takes its mean colour); a number is a value in
    model-input space. The surrogate is lime's: weighted Ridge(alpha=1) with intercept, kernel
    ``sqrt(exp(-d²/width²))`` on the cosine distance of the binary sample rows.
    """

    num_samples: int = 1000  # random on/off patterns of the superpixels, one forward each
    segmentation: Literal["quickshift", "slic"] = "quickshift"  # scikit-image's superpixel algorithm
    #: What a hidden superpixel shows: mean (its own mean colour, lime's None) or a value in model-input space.
    hide_color: Union[Literal["mean"], float] = "mean"
    kernel_width: float = 0.25  # width of the kernel that weighs each sample by its cosine distance to the image
    alpha: float = 1.0  # Ridge regularisation of the weighted linear surrogate
    # quickshift (lime's SegmentationAlgorithm defaults)
    kernel_size: float = 4.0  # quickshift's Gaussian smoothing width: larger, fewer superpixels
    max_dist: float = 200.0  # quickshift's cut-off distance: larger, fewer superpixels
    ratio: float = 0.2  # quickshift's weight of colour against position, 0 … 1: larger, more weight on colour
    # slic
    n_segments: int = 50  # slic's approximate number of superpixels
    compactness: float = 10.0  # slic's weight of position against colour: larger, squarer superpixels
    #: Where quickshift runs: cpu (scikit-image on worker processes), device (the torch port on the model's device,
    #: same labels), auto (device when the model is on a GPU, cpu on a CPU, where scikit-image is the faster one).
    segmenter: Literal["auto", "cpu", "device"] = "auto"

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
        if self.segmenter not in ("auto", "cpu", "device"):
            raise ConfigError("segmenter", f"must be auto, cpu or device, got {self.segmenter!r}")
        if self.segmenter == "device" and self.segmentation != "quickshift":
            raise ConfigError(
                "segmenter", f"device runs quickshift only; use auto or cpu with segmentation {self.segmentation}"
            )


register(MethodSpec(
    name="lime", settings=LimeSettings, label="LIME", implementation=".lime:Lime", stochastic=True, signed=True,
    # The device's quickshift gives scikit-image's labels (up to last-bit ties of exp): where superpixels are
    # computed is not fingerprinted, so a run may resume on another kind of machine.
    unhashed=("segmenter",),
    passes=lambda s, height, width: Passes(forward=s.num_samples),
))


# --------------------------------------------------------------------------------------------------- controls
# Maps that know nothing about the model (methods/controls.py): the job's ``controls: true`` adds them after its
# methods; every metric scores them, summarize reports each metric's power to reject them, none enters the rank.


@dataclass(frozen=True)
class RandomControlSettings:
    """Control map: uniform noise in [0, 1), drawn per image from its seed (job seed, image id, ``random``)."""


@dataclass(frozen=True)
class EdgesControlSettings:
    """Control map: the Sobel gradient magnitude of the model input, per channel (an edge detector)."""


@dataclass(frozen=True)
class CentreControlSettings:
    """Control map: a fixed centred Gaussian (σ a quarter of each side), the same for every image."""


def _no_passes(settings, height: int, width: int) -> Passes:
    return Passes()


for _spec in (
    MethodSpec(name="random", settings=RandomControlSettings, label="random (control)",
               implementation=".controls:RandomControl", stochastic=True, signed=False, control=True,
               passes=_no_passes),
    MethodSpec(name="edges", settings=EdgesControlSettings, label="edges (control)",
               implementation=".controls:EdgesControl", oracle=".oracles:scipy_sobel_magnitude", signed=False,
               control=True, passes=_no_passes),
    MethodSpec(name="centre", settings=CentreControlSettings, label="centre (control)",
               implementation=".controls:CentreControl", oracle=".oracles:numpy_centred_gaussian", signed=False,
               control=True, passes=_no_passes),
):
    register(_spec)


#: method name → settings class, read from the registry (methods registered later included)
METHOD_SETTINGS: Mapping[str, type] = RegistryView("settings")
