"""Map formats: where a run's maps (and model inputs) go, one writer/reader pair per format, chosen by
``output.format``.

The rows are the Parquet ledger's (:mod:`.store`): it commits them, verifies them on ``--resume`` and says which
images are done. A format stores ``(3, H, W)`` maps as :class:`MapLayout` says (dtype, channels) and reads them
back as float32 by (array, image index), where the arrays are ``inputs`` (unless left out) and one per method; the
ledger asks it which committed maps are whole. A format is one :class:`MapFormatSpec` naming its writer and reader
classes as ``"module:Class"`` (imported only when a run writes or a reader opens: zarr is not imported to validate a
job), registered with :func:`register`:

* the writer, ``Writer(out)`` (:class:`MapWriter`): lays the maps out (:meth:`MapWriter.prepare`), opens an
  :class:`~.sink.ArrayWriter` per shard, checks what is stored for ``--resume`` (:class:`MapCheck`);
* the reader, ``Reader(out)`` (:class:`MapReader`): what :func:`~.results.open_results`, ``show``, the report and
  the API read.

The format of an OUT is fixed when it is laid out: it is recorded in ``OUT/job.yaml`` and a resume follows it (it is
not in the fingerprint: a format does not change a value). fsspec and yaml only, like :mod:`.outdir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence

import fsspec
import yaml

from ..errors import OutputError
from ..registry import Registry, check_reference, load_reference
from ..yaml_io import load_yaml
from .layout import JOB_FILE

if TYPE_CHECKING:
    import numpy as np

    from .sink import ArrayWriter

#: What a job that names no format, and an OUT whose job.yaml names none, store maps in.
DEFAULT_FORMAT = "zarr"


@dataclass(frozen=True)
class MapFormatSpec:
    """One map format: its ``output.format`` name and its writer and reader classes as ``"module:Class"`` (a module
    starting with ``.`` is relative to ``xcv_batch.output``)."""

    name: str
    writer: str
    reader: str

    def __post_init__(self) -> None:
        check_reference("map format", self.name, "writer", self.writer)
        check_reference("map format", self.name, "reader", self.reader)

    def load_writer(self) -> type:
        return load_reference(self.writer, __package__)

    def load_reader(self) -> type:
        return load_reference(self.reader, __package__)


@dataclass(frozen=True)
class MapLayout:
    """What a run's maps are laid out from: N images (ids and paths, in index order) of ``resolution`` px, the
    ``inputs`` array and one array per method, and the run's attributes (model, preprocessing, categories, …) that
    readers return as :attr:`MapReader.attrs`."""

    fingerprint: str
    image_ids: Sequence[str]
    image_paths: Sequence[str] | None
    resolution: int
    methods: Sequence[str]
    attrs: dict
    #: Images stored together in one object, for a format that groups them (Zarr's sharding codec); shards start at
    #: multiples of it, so no two shards write one object.
    images_per_object: int = 1
    #: The maps' stored dtype (``output.dtype``); the writer converts the float32 maps, readers return float32.
    dtype: str = "float32"
    #: ``all``: the maps' 3 channels; ``sum``: one, their sum over the channels (``output.channels``).
    channels: str = "all"
    #: Whether the ``inputs`` array is laid out (``output.inputs``).
    inputs: bool = True

    @property
    def arrays(self) -> tuple[str, ...]:
        return ("inputs", *self.methods) if self.inputs else tuple(self.methods)

    def dtype_of(self, name: str) -> str:
        """The stored dtype of array ``name``: the inputs stay float32 (the model's exact input); maps ``dtype``."""
        return "float32" if name == "inputs" else self.dtype

    def channels_of(self, name: str) -> int:
        """The channels stored of array ``name``: the inputs keep their 3; a method's maps 1 when summed."""
        return 1 if self.channels == "sum" and name != "inputs" else 3


@dataclass(frozen=True)
class StoredMaps:
    """What a reader finds stored of one array without decoding it: the images whose map is there and can be whole,
    and the images whose stored map cannot be (image → where it is and why, for messages)."""

    whole: frozenset[int]
    broken: dict[int, str]


class MapCheck(Protocol):
    """What a writer found stored, for ``--resume``: the ledger asks it about the maps each committed shard names
    (``(image index, array)`` pairs: the ``ok`` rows' maps and inputs)."""

    def problem(self, maps: Sequence[tuple[int, str]]) -> str | None:
        """Why not all of ``maps`` are whole, as ``"3 maps that … (first: …)"``; None when each is."""

    def decode(self, maps: Iterable[tuple[int, str]]) -> None:
        """``--verify``: decode each of ``maps`` (each once); :meth:`decode_problem` then names those that failed."""

    def decode_problem(self, maps: Sequence[tuple[int, str]]) -> str | None:
        """Why not all of ``maps`` decoded in :meth:`decode`, as :meth:`problem` words it; None when each did."""

    def clean(self) -> None:
        """Remove what is stored but cannot be whole, so that a rewrite starts afresh."""


class MapWriter(Protocol):
    """A format's writer for one OUT, constructed as ``Writer(out)`` (``out``: a local path or an fsspec URL)."""

    def prepare(self, layout: MapLayout, resume: bool) -> None:
        """Lay the maps out (all missing: NaN). ``resume``: OUT holds this job; keep what is stored when it is this
        image list's (an :class:`~xcv_batch.errors.OutputError` when it is another's), lay it out again when gone."""

    def images_per_object(self) -> int | None:
        """Images per stored object of the maps already in OUT (None when there are none)."""

    def open_shard(self) -> ArrayWriter:
        """A writer for one shard's maps (:meth:`~.sink.ArrayWriter.flush` before its rows commit)."""

    def check(self, arrays: Sequence[str]) -> MapCheck:
        """What is stored of ``arrays``, for ``--resume`` (see :class:`MapCheck`)."""

    def finish(self) -> None:
        """After the last shard."""


class MapReader(Protocol):
    """A format's reader for one OUT, constructed as ``Reader(out)``; nothing is read until asked for."""

    #: What the maps are stored under in OUT (``attributions.zarr``), for messages.
    folder: str

    def exists(self) -> bool:
        """Whether OUT holds this format's maps (laid out: not necessarily written)."""

    def attrs(self) -> dict:
        """The run's attributes (:attr:`MapLayout.attrs` and its ``fingerprint``)."""

    def image_ids(self) -> list[str] | None:
        """The image ids in index order (None when the format does not know them)."""

    def has_array(self, name: str) -> bool:
        """Whether array ``name`` (``inputs`` or a method) is laid out."""

    def read(self, name: str, index: int) -> np.ndarray:
        """The ``(C, H, W)`` float32 map of image ``index`` in array ``name`` (C: 3, or 1 for maps stored summed over
        the channels; all NaN when never written); a
        :class:`MapUnreadable` naming what cannot be decoded."""

    def stored(self, name: str) -> StoredMaps:
        """What is stored of array ``name``, without decoding a map."""


class MapUnreadable(OutputError):
    """A stored map that cannot be decoded: ``path`` names what holds it, ``why`` what the decoder said."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path} cannot be decoded ({why}); run the job again with --resume --verify to recompute it")


_REGISTRY: Registry[MapFormatSpec] = Registry("map format", __name__)  # the built-in formats register below

register = _REGISTRY.register
unregister = _REGISTRY.unregister
registered = _REGISTRY.registered
format_names = _REGISTRY.names


def format_spec(name: str, out: str | None = None) -> MapFormatSpec:
    """The spec of format ``name``; an :class:`OutputError` saying which are registered when none is."""
    try:
        return _REGISTRY.get(name)
    except KeyError:
        where = f"{out} was laid out with" if out else "no"
        raise OutputError(f"{where} map format {name!r}, which is not registered (registered: "
                          f"{', '.join(format_names())})") from None


def map_writer(out: str, name: str) -> MapWriter:
    return format_spec(name, out).load_writer()(out)


def map_reader(out: str, name: str | None = None) -> MapReader:
    """The reader of OUT's maps: of format ``name``, or of the one OUT was laid out with."""
    name = name or stored_format(out) or DEFAULT_FORMAT
    return format_spec(name, out).load_reader()(out)


def stored_format(out: str) -> str | None:
    """The map format OUT was laid out with, from ``OUT/job.yaml`` (``zarr`` for a job file from before the key);
    None when OUT has no readable job file."""
    job = stored_job(out)
    return None if job is None else format_of_job(job)


def stored_job(out: str) -> dict | None:
    """``OUT/job.yaml`` read as a mapping (empty when it is not one); None when OUT has no readable job file."""
    fs, root = fsspec.core.url_to_fs(out.rstrip("/"))
    try:
        with fs.open(f"{root}/{JOB_FILE}", "r") as fh:
            job = load_yaml(fh)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return job if isinstance(job, dict) else {}


def format_of_job(job: dict) -> str:
    """The map format a job file (read as a mapping) names: ``output.format``, else the default."""
    output = job.get("output")
    name = output.get("format") if isinstance(output, dict) else None
    return str(name) if name else DEFAULT_FORMAT


# The built-in format. A format outside the package registers its own spec the same way.
register(MapFormatSpec(name="zarr", writer=".zarr_maps:ZarrWriter", reader=".zarr_maps:ZarrReader"))
