"""The attribution methods: registered in ``settings`` (one ``MethodSpec`` beside each settings class, torch-free),
implemented one module per method, imported only when a job builds the method."""

from __future__ import annotations

from .registry import MethodSpec, method_names, method_spec, method_specs, register, registered, unregister

__all__ = ["MethodSpec", "build_method", "method_class", "method_names", "method_spec", "method_specs", "register",
           "registered", "unregister"]


def method_class(name: str):
    """The AttributionMethod subclass registered as ``name``, with the spec's name, settings type, ``stochastic``
    and ``differentiates`` as its class attributes."""
    spec = method_spec(name)
    return spec.bind(spec.load())


def build_method(name: str, classifier, settings, forward_batch: int):
    return method_class(name)(classifier, settings, forward_batch=forward_batch)
