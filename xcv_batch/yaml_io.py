"""YAML as the job files use it: plain data, no aliases.

An alias re-uses an anchored node, so a few hundred bytes of nested aliases expand into billions of nodes once the
data is walked or copied ("billion laughs"). Job files never need them, so the loader refuses every alias while
composing, before anything is expanded; anchors alone are harmless and stay allowed.

Nesting is bounded too: PyYAML composes a node's children recursively, so 100 KB of ``[[[…]]]`` exhausts Python's
stack (a RecursionError, not a YAMLError). Job files nest four levels deep; beyond :data:`MAX_DEPTH` the loader stops
with the line, before the stack runs out.
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


#: Levels of nested mappings and lists a job file may have (it uses four; each level costs the composer ~3 frames of
#: Python's 1000, so this stays far from the stack's end whoever calls the loader).
MAX_DEPTH = 32


class NestingRefused(yaml.YAMLError):
    """Mappings or lists nested deeper than :data:`MAX_DEPTH`; ``problem_mark`` says where."""

    def __init__(self, mark):
        self.problem_mark = mark
        self.problem = f"nested deeper than {MAX_DEPTH} levels; a job file needs a few"
        super().__init__(self.problem)


class _NoAliasLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(event.anchor, event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise NestingRefused(self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(source: str | bytes | TextIO) -> Any:
    """``yaml.safe_load`` without aliases or deep nesting (raises :class:`AliasRefused` or :class:`NestingRefused`,
    both ``yaml.YAMLError``)."""
    return yaml.load(source, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
