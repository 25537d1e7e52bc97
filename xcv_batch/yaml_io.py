"""YAML as the job files use it: plain data, no aliases.

An alias re-uses an anchored node, so a few hundred bytes of nested aliases expand into billions of nodes once the
data is walked or copied ("billion laughs"). Job files never need them, so the loader refuses every alias while
composing, before anything is expanded; anchors alone are harmless and stay allowed.
"""

from __future__ import annotations

from typing import Any, TextIO

import yaml


class AliasRefused(yaml.YAMLError):
    """A YAML alias (``*name``) was found; ``problem_mark`` says where."""

    def __init__(self, anchor: str, mark):
        self.anchor = anchor
        self.problem_mark = mark
        self.problem = f"aliases (*{anchor}) are not allowed in job files; write the value out"
        super().__init__(self.problem)


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(event.anchor, event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(source: str | bytes | TextIO) -> Any:
    """``yaml.safe_load`` without aliases (raises :class:`AliasRefused`, a ``yaml.YAMLError``)."""
    return yaml.load(source, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
