"""The data-source registry: one :class:`SourceSpec` per kind of ``data.source`` (folder/glob/manifest, ``builtin:``).

Torch-free and light: the driver lists the images, and ``--dry-run`` counts them, before it imports torch; only the
string tests in ``matches`` run when a job is validated. A spec is everything the rest of the package knows about a
kind of source:

* ``name`` — what it is called in messages and tests;
* ``matches(source)`` — whether a ``data.source`` string is of this kind (a test of the string, no I/O);
* ``lister`` — ``"module:function"`` of ``list(source) -> Iterable[ImageRecord]``: its images in any order (a
  generator is fine), raising :class:`~xcv_batch.errors.DataError` for a source that cannot be used;
  :func:`~xcv_batch.data.sources.list_images` sorts them by ``image_id`` and keeps the first ``data.limit``;
* ``reader`` — ``"module:function"`` of ``read(path) -> bytes``: the encoded image (or mask) a record's ``path``
  (``mask_path``) names, for sources whose images are not files or URLs (members of a tar, rows of a Parquet file,
  generated pictures); "" when they are, and the decoder opens them itself. Listing writes it into every record, so
  the worker that decodes the image imports the module, and needs no registry;
* ``written`` — how such a source is written, for the message that lists what ``data.source`` may be;
* ``unlabelled`` — why its images never have labels (``target: label`` is refused with it), "" when they may.

A module starting with ``.`` is relative to ``xcv_batch.data``. The spec registered last whose ``matches`` accepts a
source lists it, so a new kind can claim a pattern before the folder/glob/manifest kind, registered first, which
accepts any source the others leave. The built-in kinds register when :mod:`xcv_batch.data.sources` is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from ..registry import Registry, check_reference, load_reference

if TYPE_CHECKING:
    from .sources import ImageRecord


@dataclass(frozen=True)
class SourceSpec:
    """One kind of data source, as the registry knows it (see the module docstring)."""

    name: str
    matches: Callable[[str], bool]
    lister: str
    written: str
    reader: str = ""
    unlabelled: str = ""

    def __post_init__(self) -> None:
        check_reference("data source", self.name, "lister", self.lister)
        if self.reader:
            check_reference("data source", self.name, "reader", self.reader)

    def list(self, source: str) -> Iterable["ImageRecord"]:
        """The images of ``source``, unsorted (imports the lister's module)."""
        return load_reference(self.lister, __package__)(source)


def read_with(reader: str, path: str) -> bytes:
    """The bytes ``reader`` (``"module:function"``, relative to this package) gives for ``path``."""
    return load_reference(reader, __package__)(path)


# sources.py registers the built-in kinds
_REGISTRY: Registry[SourceSpec] = Registry("data source", f"{__package__}.sources")

register = _REGISTRY.register
unregister = _REGISTRY.unregister
registered = _REGISTRY.registered
source_spec = _REGISTRY.get
source_specs = _REGISTRY.specs


def source_kind(source: str) -> SourceSpec:
    """The spec that lists ``source``: the last registered whose ``matches`` accepts it."""
    for spec in reversed(source_specs()):
        if spec.matches(source):
            return spec
    raise ValueError(f"no data source kind accepts {source!r}")  # the folder/glob/manifest kind accepts any


def source_kinds_text() -> str:
    """What ``data.source`` may be, for messages: "a folder, …, or builtin:skimage"."""
    written = [spec.written for spec in source_specs()]
    return written[0] if len(written) == 1 else ", ".join(written[:-1]) + ", or " + written[-1]
