"""Methods' display names in tables and figures: the reports' own knowledge of the methods registry, so that
reading a run (output/) never needs the methods package."""

from __future__ import annotations

from typing import Mapping

from ..methods.registry import RegistryView

#: Display names (each method's registered label), as the seed report wrote them.
METHOD_LABELS: Mapping[str, str] = RegistryView("label")


def method_label(name: str) -> str:
    """The display name of a method (its registry name when it has none)."""
    return METHOD_LABELS.get(name, name)
