"""``model.arch: timm:<name>``: a timm model (an optional extra), its weights, data config and class names.

Preprocessing comes from timm's data config for the name (``resolve_data_config`` of its pretrained config: the
same dict ``resolve_model_data_config`` gives for the built model): mean, std, interpolation and ``crop_pct``, the
resize being ``resolution / crop_pct``. The input size is ``model.resolution``, as for every arch.
"""

from __future__ import annotations

import logging
import os

from ..errors import ConfigError, ModelError
from .pinned import PinnedWeights
from .preprocessing import Preprocessing, timm_preprocessing
from .source import BuiltModel
from .state_dict import first_sentence, head_size, load_exactly, load_state_dict_file, seeded

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install xcv_batch[timm]"


def import_timm():
    """timm, or a one-line ConfigError saying how to install it."""
    try:
        import timm
        import timm.data
    except ImportError:
        raise ConfigError("model.arch", f"timm models need the timm package: {INSTALL_HINT}") from None
    return timm


def check(name: str) -> None:
    timm = import_timm()
    if not timm.is_model(name):
        raise ConfigError("model.arch", f"'timm:{name}' is not a timm model (timm.list_models() names them, "
                                        "e.g. timm:resnet18)")


def data_config(name: str) -> dict:
    """timm's resolved data config for ``name`` (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
    timm = import_timm()
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    config = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else None)
    if config.get("crop_mode", "center") != "center":
        log.warning("timm:%s's data config asks for crop_mode=%s; xcv_batch always centre-crops", name,
                    config["crop_mode"])
    return config


def preprocessing(name: str, resolution: int) -> Preprocessing:
    return timm_preprocessing(data_config(name), resolution)


def pretrained_categories(name: str) -> tuple[str, ...] | None:
    """Class names of timm's pretrained weights for ``name`` when they are an ImageNet subset (timm's own label
    tables, chosen by the number of classes as timm does); None otherwise."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    pretrained_cfg = import_timm().models.get_pretrained_cfg(name)
    subset = infer_imagenet_subset(pretrained_cfg.to_dict()) if pretrained_cfg else None
    return tuple(ImageNetInfo(subset).label_descriptions()) if subset else None


def build(name: str, weights: str, seed: int, resolution: int,
          pinned: PinnedWeights | None = None) -> BuiltModel:
    check(name)
    timm = import_timm()
    if weights.lower() == "none":
        with seeded(seed):
            net = timm.create_model(name, pretrained=False)
        return BuiltModel(net, preprocessing(name, resolution), None, "none")

    if weights == "pretrained":
        try:
            net = timm.create_model(name, pretrained=True)
        except Exception as err:  # noqa: BLE001 - hub, network and cache errors come in many types
            raise ModelError(
                f"model.weights: could not fetch timm's pretrained weights for {name} ({type(err).__name__}: "
                f"{first_sentence(err)}). Offline? Put them in the Hugging Face cache, pass a local state_dict path, "
                "or run with --set model.weights=none (random init from the job seed)."
            ) from err
        return BuiltModel(net, preprocessing(name, resolution), pretrained_categories(name), f"timm:{name} pretrained")

    if pinned is not None or os.path.exists(weights):
        state = load_state_dict_file(weights, pinned)
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        classes = head_size(state, pretrained_cfg.classifier if pretrained_cfg else None)
        with seeded(seed):
            net = timm.create_model(name, pretrained=False, **({"num_classes": classes} if classes else {}))
        load_exactly(net, state, f"model.weights: {weights} does not fit timm:{name}")
        return BuiltModel(net, preprocessing(name, resolution), None, os.path.abspath(weights))

    raise ConfigError("model.weights", f"'{weights}' is neither 'pretrained' (timm's download), 'none', nor an "
                                       f"existing state_dict file, for timm:{name}")


def describe(name: str, weights: str, resolution: int) -> tuple[Preprocessing, tuple[str, ...] | None]:
    """What :func:`build` gives for preprocessing and class names, without building the network."""
    return preprocessing(name, resolution), pretrained_categories(name) if weights == "pretrained" else None
