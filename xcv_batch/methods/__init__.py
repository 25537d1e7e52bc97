"""The attribution-method registry: one module per method, imported only when a job asks for it."""

from __future__ import annotations

import importlib

from .settings import METHOD_SETTINGS

#: method name → "module:class"
_IMPLEMENTATIONS = {
    "occlusion": "occlusion:Occlusion",
    "integrated_gradients": "integrated_gradients:IntegratedGradients",
    "ig_smoothgrad": "ig_smoothgrad:IGSmoothGrad",
    "guided_gradcam": "guided_gradcam:GuidedGradCam",
    "lime": "lime:Lime",
}

METHOD_NAMES: tuple[str, ...] = tuple(METHOD_SETTINGS)


def method_class(name: str):
    """The AttributionMethod subclass registered as ``name``."""
    module_name, class_name = _IMPLEMENTATIONS[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)


def build_method(name: str, classifier, settings, forward_batch: int):
    return method_class(name)(classifier, settings, forward_batch=forward_batch)
