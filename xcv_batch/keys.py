"""The job-key reference (``python -m xcv_batch keys``), generated from the config dataclasses themselves.

Every key of a job file — type or choices, default, meaning — is read from the code that parses it, so the
reference cannot drift from it: :func:`job_keys` walks :class:`~xcv_batch.config.Job`'s dataclass fields
recursively, and a mapping-typed section (``methods:``, ``metrics:``) through the registry that defines its entries
(:data:`SECTION_REGISTRIES`, one small adapter per registry). A key's meaning is its field's comment, read as Sphinx
autodoc reads attribute comments: a ``#:`` block directly above the field, else the comment at the end of its line;
a plain ``#`` line above a field is a remark about the code, not the key's meaning. A section key (``sensitivity``,
``methods.lime``) with no comment of its own takes the first paragraph of its dataclass's docstring.

Torch-free, like config: printing the reference imports no model code.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

from .config import Job, allows_none, dataclass_in, type_text, yaml_scalar
from .methods.registry import method_specs
from .metrics.registry import metric_specs

class _Off:
    """The default of a registry entry that is not run when the job leaves it out (a method)."""

    def __repr__(self) -> str:
        return "absent (off)"


OFF = _Off()


@dataclass(frozen=True)
class Entry:
    """One entry of a mapping section, as its registry defines it: the type of its value (a settings dataclass, or a
    scalar type), the value it takes when the job leaves it out (:data:`OFF`: not run), and its meaning (a settings
    dataclass without one is described by its docstring)."""

    type: Any
    default: Any = OFF
    doc: str = ""


def _method_entries() -> dict[str, Entry]:
    # the control maps have no settings and come with the top-level ``controls`` key
    return {spec.name: Entry(spec.settings) for spec in method_specs() if not spec.control}


def _metric_entries() -> dict[str, Entry]:
    # null turns off a metric that has settings, as it does a nullable section
    return {spec.name: Entry(Optional[spec.settings] if dataclasses.is_dataclass(spec.settings) else spec.settings,
                             spec.default, spec.doc)
            for spec in metric_specs() if spec.in_metrics_section}


Registries = Mapping[str, Callable[[], Mapping[str, Entry]]]

#: Mapping-typed sections (dotted key) → their registry's entries, so that every registered entry is listed.
SECTION_REGISTRIES: Registries = {"methods": _method_entries, "metrics": _metric_entries}


@dataclass(frozen=True)
class KeyDoc:
    """One job key: its dotted name, its type or choices, its default (as written in YAML) and what it means."""

    key: str
    type: str
    default: str
    meaning: str
    #: the section the key is listed under ("" for the top level)
    section: str


def job_keys(root: type = Job, registries: Registries | None = None) -> list[KeyDoc]:
    """Every key of a job file, grouped by section in the order the sections first appear among the dataclass fields
    (the top level first; a registry's entries in registration order)."""
    keys = list(_fields(root, "", SECTION_REGISTRIES if registries is None else registries))
    order = {"": -1}
    for k in keys:
        order.setdefault(k.section, len(order))
    return sorted(keys, key=lambda k: order[k.section])  # stable: fields keep their order within a section


def _fields(cls: type, prefix: str, registries: Registries) -> Iterator[KeyDoc]:
    """The rows of every field of dataclass ``cls``, whose keys start with ``prefix``."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        yield from _key(prefix + f.name, hints[f.name], _default(f), docs.get(f.name, ""), registries)


def _key(key: str, tp: Any, default: Any, doc: str, registries: Registries) -> Iterator[KeyDoc]:
    """The rows of one key: a value's own row, or a section's row (when it can be switched) and its keys' rows."""
    parent = key.rpartition(".")[0]
    nested = dataclass_in(tp)
    if nested is not None:
        if default is OFF or allows_none(tp):  # the key itself turns the section on ({}: the defaults) or off
            shown = "{}" if dataclasses.is_dataclass(default) else yaml_text(default)
            yield KeyDoc(key, "mapping | null" if allows_none(tp) else "mapping", shown, doc or _summary(nested), key)
        yield from _fields(nested, key + ".", registries)
    elif _is_mapping(tp):
        if key not in registries:
            raise LookupError(f"{key} is a mapping section without a registry: add it to SECTION_REGISTRIES")
        for name, entry in registries[key]().items():
            yield from _key(f"{key}.{name}", entry.type, entry.default, entry.doc, registries)
    else:
        yield KeyDoc(key, type_text(tp), yaml_text(default), doc, parent)


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) in (collections.abc.Mapping, dict) or (
        isinstance(tp, type) and issubclass(tp, collections.abc.Mapping))


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _summary(cls: type) -> str:
    """The first paragraph of the docstring of ``cls`` or else its nearest base that has one, on one line, with
    reST's ``code`` marks made markdown's `code` ("" when none has a docstring)."""
    for base in cls.__mro__:
        doc = base.__dict__.get("__doc__") or ""
        if doc and not doc.startswith(base.__name__ + "("):  # dataclass() writes its signature where there is none
            return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()).replace("``", "`")
    return ""


# ------------------------------------------------------------------------------ types and values as a job writes them


def yaml_text(value: Any) -> str:
    """A default as it is written in a job file (types are written by :func:`xcv_batch.config.type_text`)."""
    return repr(OFF) if value is OFF else yaml_scalar(value)


# --------------------------------------------------------------------------------------------- comments as meanings


def field_docs(cls: type) -> dict[str, str]:
    """Field name → its comment, over the class and its dataclass bases (a subclass's own comment wins)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update({name: doc for name, doc in _own_field_docs(base).items() if doc})
    return docs


@functools.lru_cache(maxsize=None)
def _own_field_docs(cls: type) -> dict[str, str]:
    """The comments of the fields written in ``cls``'s own body: a ``#:`` block directly above, else the comments
    on the lines of the field's statement."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line → the comment on it
    whole_line: set[int] = set()  # lines that hold nothing but a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
            if not tok.line[: tok.start[1]].strip():
                whole_line.add(tok.start[0])
    body = ast.parse(source).body[0].body
    docs = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in whole_line and comments[line].startswith("#:"):
            above.insert(0, comments[line][2:].strip())
            line -= 1
        trailing = [comments[n].lstrip("#:").strip() for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments and n not in whole_line]
        docs[node.target.id] = " ".join(above or trailing)
    return docs


# ------------------------------------------------------------------------------------------------------- rendering


MAX_TYPE_WIDTH = 24


def render_text(keys: list[KeyDoc]) -> str:
    """One key a line — key, type, default, meaning — in aligned columns, a blank line and a heading per section."""
    width_key = max(len(k.key) for k in keys)
    # a long list of choices (IG's five quadrature rules) pushes its own line out rather than every line's meaning
    width_type = min(max(len(k.type) for k in keys), MAX_TYPE_WIDTH)
    width_default = max(len(k.default) for k in keys)
    lines: list[str] = []
    section = None
    for k in keys:
        if k.section != section:
            section = k.section
            if lines:
                lines.append("")
            lines.append(f"[{section or 'top level'}]")
        row = f"{k.key:<{width_key}}  {k.type:<{width_type}}  {k.default:<{width_default}}  {k.meaning}"
        lines.append(row.rstrip())
    return "\n".join(lines) + "\n"


def render_markdown(keys: list[KeyDoc]) -> str:
    """One markdown table of every key, for the key reference page docs/reference.md (``|`` in types escaped for
    GitHub's table parser)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for k in keys:
        cells = (f"`{k.key}`", f"`{k.type}`", f"`{k.default}`", k.meaning)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
