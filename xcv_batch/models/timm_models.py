"""``model.arch: timm:<name>``: a timm model (an optional extra), its weights, data config and class names.

Preprocessing comes from timm's data config for the name (``resolve_data_config`` of its pretrained config: the
same dict ``resolve_model_data_config`` gives for the built model): mean, std, interpolation and ``crop_pct``, the
resize being ``resolution / crop_pct``. The input size is ``model.resolution``, as for every arch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from urllib.parse import urlsplit

from ..errors import ConfigError, ModelError, cli_or_python
from .pinned import PinnedWeights
from .preprocessing import Preprocessing, timm_preprocessing
from .source import BuiltModel
from .state_dict import first_sentence, head_size, load_exactly, load_state_dict_file, seeded

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install xcv_batch[timm]"
#: Seconds to wait for the weights' host (name lookup and connection) before saying it cannot be reached: the hub
#: client would otherwise retry for about a minute, printing a line per retry.
REACH_TIMEOUT_S = 3.0


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
        offline_hint = ("Offline? Put them in the Hugging Face cache, pass a local state_dict path, or "
                        + cli_or_python("run with --set model.weights=none", "set model.weights to 'none'")
                        + " (random init from the job seed).")
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        cached = _in_cache(pretrained_cfg)
        if not cached:
            host = _weights_host(pretrained_cfg)
            why = _unreachable(*host) if host is not None else None
            if why is not None:
                raise ModelError(f"model.weights: cannot reach {host[0]} for timm's pretrained weights for {name} "
                                 f"({why}). {offline_hint}")
        try:
            with _quiet_hub(offline=cached):
                net = timm.create_model(name, pretrained=True)
        except Exception as err:  # noqa: BLE001 - hub, network and cache errors come in many types
            raise ModelError(
                f"model.weights: could not fetch timm's pretrained weights for {name} ({type(err).__name__}: "
                f"{first_sentence(err)}). {offline_hint}"
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


# ------------------------------------------------------------------------------------------------------ offline


def _in_cache(pretrained_cfg) -> bool:
    """Whether the pretrained weights are already on this machine (Hugging Face cache or torch's hub folder)."""
    if pretrained_cfg is None:
        return False
    if getattr(pretrained_cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache

        repo = pretrained_cfg.hf_hub_id.split("@")[0]
        filenames = [getattr(pretrained_cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames if f)
    url = getattr(pretrained_cfg, "url", None)
    if url:
        import torch.hub

        return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlsplit(url).path)))
    return False


def _weights_host(pretrained_cfg) -> tuple[str, int] | None:
    """(host, port) the download goes to first: a proxy when one is set, else the hub (or the weights' URL)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None  # the hub client fails at once by itself
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        url = proxy if "://" in proxy else f"http://{proxy}"
    elif pretrained_cfg is not None and getattr(pretrained_cfg, "hf_hub_id", None):
        url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    elif pretrained_cfg is not None and getattr(pretrained_cfg, "url", None):
        url = pretrained_cfg.url
    else:
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _unreachable(host: str, port: int, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why ``host:port`` cannot be connected to within ``timeout`` seconds, or None when it can. The name lookup
    runs in a thread, since ``getaddrinfo`` has no timeout of its own."""
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{type(err).__name__}: {err}")

    thread = threading.Thread(target=connect, name="xcv-reach", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer in {timeout:g} s"


@contextmanager
def _quiet_hub(offline: bool):
    """The hub's retry warnings off while timm fetches (its error is the one line we print); with the weights in the
    cache, the hub is asked to stay offline so that it reads them without asking the network first."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "urllib3", "httpx")]
    levels = [logger.level for logger in loggers]
    constants, was_offline = None, None
    if offline:
        try:
            from huggingface_hub import constants

            was_offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
        except (ImportError, AttributeError):
            constants = None
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if constants is not None:
            constants.HF_HUB_OFFLINE = was_offline
