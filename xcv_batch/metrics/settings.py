"""Settings of each quality metric, with the seed report's values as defaults, and each metric's registration.

Kept apart from the metric code (and free of torch) so that validating a job file and summarising results are cheap.
Each ``check`` raises ``ConfigError`` with a key relative to the metric; the job loader prefixes ``metrics.<name>.``
(``sensitivity.`` for Max-Sensitivity). Beside each settings class, one :class:`~xcv_batch.metrics.registry.MetricSpec`
registers the metric: its job key, its columns with their directions, and where its (torch) implementation lives.
Registration order is the order the runner evaluates them in, and the order of the summary's metric columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from ..errors import ConfigError
from ..methods.registry import Passes
from .registry import MetricInfo, MetricSpec, register


# -------------------------------------------------------------------------------------------------- robustness
@dataclass(frozen=True)
class SensitivityConfig:
    """Captum ``sensitivity_max``: uniform L∞ noise of ``perturb_radius``, Frobenius norm, relative to ‖Φ(x)‖."""

    n_perturb_samples: int = 10  # perturbed copies per image (a Monte-Carlo lower bound: compare at the same n)
    perturb_radius: float = 0.02  # L∞ radius of the uniform noise, in model-input (normalised) units

    def check(self) -> None:
        if self.n_perturb_samples < 1:
            raise ConfigError("n_perturb_samples", f"must be ≥ 1, got {self.n_perturb_samples}")
        if self.perturb_radius <= 0:
            raise ConfigError("perturb_radius", f"must be > 0, got {self.perturb_radius}")


register(MetricSpec(
    # The seed report's quality column (Table I); on unless the job says ``sensitivity: null``.
    name="sensitivity", settings=SensitivityConfig, default=SensitivityConfig(), job_key="sensitivity",
    columns=(MetricInfo("sensitivity_max", "lower", "Max-Sensitivity", family="robustness"),),
    implementation=".sensitivity:MaxSensitivity",
    # the method explains each of the n perturbed copies again (Φ(x) itself is the map already computed)
    passes=lambda s, explanation: explanation.times(s.n_perturb_samples),
))


# ------------------------------------------------------------------------------------------------ faithfulness
@dataclass(frozen=True)
class InfidelityConfig:
    """Captum ``infidelity`` with ``normalize=True``; Gaussian noise I of ``noise_std``, perturbed input x − I."""

    n_perturb_samples: int = 10  # noise draws per image
    noise_std: float = 0.003  # Captum's documented example scheme; compare values only at the same noise_std

    def check(self) -> None:
        if self.n_perturb_samples < 1:
            raise ConfigError("n_perturb_samples", f"must be ≥ 1, got {self.n_perturb_samples}")
        if self.noise_std <= 0:
            raise ConfigError("noise_std", f"must be > 0, got {self.noise_std}")


@dataclass(frozen=True)
class CausalCurveConfig:
    """RISE deletion/insertion (Petsiuk et al. 2018): ``n_steps`` equal fractions of the pixels, most relevant first."""

    n_steps: int = 50  # steps of the curve: each changes ⌈H·W / n_steps⌉ pixels
    #: what a removed (or not yet inserted) pixel shows: zero (the dataset mean colour), blur (the image blurred),
    #: mean (the image's per-channel mean)
    substrate: Literal["zero", "blur", "mean"] = "zero"
    blur_sigma: float = 5.0  # σ in pixels of the blur substrate's Gaussian

    def check(self) -> None:
        if self.n_steps < 1:
            raise ConfigError("n_steps", f"must be ≥ 1, got {self.n_steps}")
        if self.blur_sigma <= 0:
            raise ConfigError("blur_sigma", f"must be > 0, got {self.blur_sigma}")


@dataclass(frozen=True)
class InsertionConfig(CausalCurveConfig):
    substrate: Literal["zero", "blur", "mean"] = "blur"  # RISE inserts into a blurred copy


register(MetricSpec(
    name="infidelity", hashed_when_off=True, settings=InfidelityConfig, implementation=".faithfulness:Infidelity",
    passes=lambda s, explanation: Passes(forward=s.n_perturb_samples + 1),
    columns=(MetricInfo("infidelity", "lower", "Infidelity", family="faithfulness"),),
))
register(MetricSpec(
    name="deletion", hashed_when_off=True, settings=CausalCurveConfig, implementation=".faithfulness:Deletion",
    passes=lambda s, explanation: Passes(forward=s.n_steps + 1),
    columns=(MetricInfo("deletion_auc", "lower", "Deletion AUC", family="faithfulness"),),
))
register(MetricSpec(
    name="insertion", hashed_when_off=True, settings=InsertionConfig, implementation=".faithfulness:Insertion",
    passes=lambda s, explanation: Passes(forward=s.n_steps + 1),
    columns=(MetricInfo("insertion_auc", "higher", "Insertion AUC", family="faithfulness"),),
))


# ----------------------------------------------------------------------------------------------- randomisation
@dataclass(frozen=True)
class RandomisationConfig:
    """Adebayo et al. 2018, cascading: the top ``depth`` parameterised blocks re-initialised (seeded by the job)."""

    depth: int = 1  # parameterised blocks re-initialised, from the output down

    def check(self) -> None:
        if self.depth < 1:
            raise ConfigError("depth", f"must be ≥ 1, got {self.depth}")


register(MetricSpec(
    # Similarity of a map to the map of a randomised model: a map that survives randomisation does not depend on
    # what the model learned, so lower is better.
    name="randomisation", settings=RandomisationConfig, hashed_when_off=True, implementation=".randomisation:Randomisation",
    passes=lambda s, explanation: explanation,  # one more explanation, on the randomised model
    columns=(MetricInfo("randomisation_spearman", "lower", "Randomisation Spearman", family="randomisation"),
             MetricInfo("randomisation_ssim", "lower", "Randomisation SSIM", family="randomisation")),
))


# -------------------------------------------------------------------------------------------------- complexity
@dataclass(frozen=True)
class ComplexityConfig:
    """Sparseness (Gini index of |Σ_c a| over pixels) and effective complexity (pixels above ``eps`` × the largest)."""

    eps: float = 1e-5  # Quantus EffectiveComplexity's default, relative to the map's largest pixel relevance

    def check(self) -> None:
        if not 0 <= self.eps < 1:
            raise ConfigError("eps", f"must be in [0, 1), got {self.eps}")


register(MetricSpec(
    # A concentrated map is easier to read; an all-zero map has neither value.
    name="complexity", settings=ComplexityConfig, implementation=".complexity:Complexity",
    columns=(MetricInfo("sparseness", "higher", "Sparseness", family="complexity"),
             MetricInfo("effective_complexity", "lower", "Effective complexity", "px", family="complexity")),
))


# ------------------------------------------------------------------------------------------------ localisation
LocalisationSwitch = Union[Literal["auto"], bool]

register(MetricSpec(
    name="localisation", settings=LocalisationSwitch, default="auto", uses_masks=True,
    masks_required=lambda switch: switch is True,  # auto evaluates the images that have one
    doc="pointing game, relevance mass and rank against the manifest's mask_path: auto (every image that has one), "
        "true (every image must have one), false (off)",
    implementation=".localisation:Localisation",
    columns=(MetricInfo("pointing_game", "higher", "Pointing game", family="localisation"),
             MetricInfo("relevance_mass", "higher", "Relevance mass", family="localisation"),
             MetricInfo("relevance_rank", "higher", "Relevance rank", family="localisation")),
))
