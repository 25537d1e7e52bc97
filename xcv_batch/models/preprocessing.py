"""How an image becomes a model's input, and where that comes from: the weights, timm's data config, or the job.

The input is always ``resolution`` × ``resolution`` (the centre crop); what the weights say is their resize/crop
ratio, mean, std and interpolation, scaled to that size. ``model.preprocessing`` then overrides key by key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import ConfigError
from ..output.layout import IMAGENET_MEAN, IMAGENET_STD  # for models whose weights say nothing


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side, centre-crop, scale to [0, 1], normalise: torchvision's ``ImageClassification``."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def mean_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def std_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def normalize(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → model input."""
        return (pixels01 - self.mean_tensor(pixels01.device)) / self.std_tensor(pixels01.device)

    def denormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model input → (B, 3, H, W) pixel values (≈ [0, 1]; perturbed inputs may leave it slightly)."""
        return inputs * self.std_tensor(inputs.device) + self.mean_tensor(inputs.device)


def imagenet_preprocessing(resolution: int) -> Preprocessing:
    """For weights that say nothing: ImageNet's mean and std, torchvision's resize 256 → crop 224 ratio, bilinear."""
    return Preprocessing(round(resolution * 256 / 224), resolution, IMAGENET_MEAN, IMAGENET_STD)


def torchvision_preprocessing(weights, resolution: int) -> Preprocessing:
    """A torchvision weights' own transform (resize/crop ratio, mean, std), scaled to ``resolution``."""
    transform = weights.transforms()
    crop = transform.crop_size[0]
    resize = transform.resize_size[0]
    return Preprocessing(
        resize_size=round(resolution * resize / crop),
        crop_size=resolution,
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
        interpolation=transform.interpolation.value,
    )


def timm_preprocessing(data_config: Mapping[str, Any], resolution: int) -> Preprocessing:
    """timm's data config (``resolve_data_config``) at ``resolution``: resize = resolution / crop_pct, rounded down
    as timm's own eval transform does, then the centre crop."""
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    return Preprocessing(
        resize_size=math.floor(resolution / crop_pct),
        crop_size=resolution,
        mean=tuple(float(v) for v in data_config["mean"]),
        std=tuple(float(v) for v in data_config["std"]),
        interpolation=str(data_config.get("interpolation") or "bilinear"),
    )


#: ``model.preprocessing`` keys → Preprocessing fields
_FIELDS = {"mean": "mean", "std": "std", "resize": "resize_size", "crop": "crop_size", "interpolation": "interpolation"}


def with_overrides(base: Preprocessing, overrides) -> Preprocessing:
    """``base`` with the keys ``overrides`` sets (a ``PreprocessingConfig``, or a mapping of the job file's keys,
    validated as the job file's are); None leaves it as it is."""
    if overrides is None:
        return base
    settings = preprocessing_settings(overrides)
    changes = {}
    for key, field in _FIELDS.items():
        value = getattr(settings, key)
        if value is not None:
            changes[field] = tuple(float(v) for v in value) if key in ("mean", "std") else value
    chosen = dataclasses.replace(base, **changes)
    if chosen.resize_size < chosen.crop_size:
        raise ConfigError("model.preprocessing.resize", f"must be ≥ the crop ({chosen.crop_size}): the crop is "
                                                        f"taken from the resized image, got {chosen.resize_size}")
    return chosen


def preprocessing_settings(overrides):
    """A ``PreprocessingConfig`` from one, or from a mapping of its keys (ConfigErrors name ``model.preprocessing``)."""
    from ..config import PreprocessingConfig, build_dataclass

    if isinstance(overrides, PreprocessingConfig):
        return overrides
    return build_dataclass(PreprocessingConfig, overrides, "model.preprocessing")


def preprocessing_from(spec, resolution: int | None = None) -> Preprocessing:
    """A Preprocessing from what a Python caller gives: one already, None (ImageNet's at ``resolution`` or 224), or
    the job file's keys (``crop`` is the input size when ``resolution`` is not given)."""
    if isinstance(spec, Preprocessing):
        return spec
    settings = preprocessing_settings(spec) if spec is not None else None
    if resolution is not None and settings is not None and settings.crop is not None and settings.crop != resolution:
        # Both name the input size: a conflict, not a resize problem (the resize would be scaled to the wrong one).
        raise ConfigError("preprocessing.crop", f"is {settings.crop} but resolution is {resolution}; both are the "
                                                "model's input size: give one of them, or the same value")
    size = resolution or (settings.crop if settings is not None and settings.crop else 224)
    return with_overrides(imagenet_preprocessing(size), settings)
