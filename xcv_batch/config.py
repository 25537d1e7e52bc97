"""The job: YAML file → ``--set`` overrides → one frozen, validated :class:`Job`.

Validation happens once, here, and every problem is a :class:`ConfigError` naming the dotted key and what is allowed.
The rest of the code receives typed pieces of the job and does not re-check them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Union

import yaml

from .data.registry import source_kind
from .errors import ConfigError, cli_or_python
from .models.kinds import kinds_text, model_kind
from .methods.registry import control_names, is_control, method_spec, method_specs
from .methods.settings import METHOD_SETTINGS
from .metrics.registry import metric_specs
from .output.formats import format_names
from .output.layout import auto_images_per_object
from .metrics.settings import (  # noqa: F401 - the settings of the metrics, importable from here as before
    CausalCurveConfig, ComplexityConfig, InfidelityConfig, InsertionConfig, RandomisationConfig, SensitivityConfig,
)
from .yaml_io import AliasRefused, NestingRefused, load_yaml

#: Job files are a few hundred bytes; a bound keeps a stray data file from being parsed as one.
MAX_JOB_FILE_BYTES = 1024**2


@dataclass(frozen=True)
class DataConfig:
    #: The images: a folder (recursive), a glob, a .txt list or .csv/.parquet manifest (path[, label][, mask_path]),
    #: WebDataset tar shards (train-{000..099}.tar, .cls labels), a .parquet file with an 'image' bytes column
    #: [+ label], an s3:// URL of any of those, or builtin:skimage (six photographs bundled with scikit-image).
    source: str = "builtin:skimage"
    limit: Optional[int] = None  # explain only the first N images in image-id order; null: all of them

    def check(self) -> None:
        if not self.source:
            raise ConfigError("source", "must name a folder, glob, manifest, s3:// prefix or builtin:skimage")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit", f"must be ≥ 1 or null, got {self.limit}")


MIN_RESOLUTION = 16
#: A 2048 px input is 48 MiB per copy as float32 and a CPU forward batch holds 64 copies (3 GiB) before any
#: activation; classifiers are trained at 224–600 px, so beyond this a resolution is a typo, not a plan.
MAX_RESOLUTION = 2048
#: Seeds go to torch.manual_seed (at most 2**64 − 1) and into the per-image seed derivation; negative ones are typos.
MAX_SEED = 2**63 - 1


#: The smallest ``model.preprocessing.std``: pixels in [0, 1] divided by it stay far inside float32's range (1e38);
#: a std of 1e-300 turns every input into ±inf, and every map of every image into NaN.
MIN_STD = 1e-6

#: How an image is resized for a model, as torchvision names them (PIL's filters).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class PreprocessingConfig:
    """The input transform, key by key; a key left out keeps what the weights say (ImageNet's, when they say nothing:
    mean/std of ImageNet, resize = resolution · 256/224, bilinear)."""

    mean: Optional[list[float]] = None  # per-channel mean of the [0, 1] RGB pixels, subtracted: three numbers
    std: Optional[list[float]] = None  # per-channel standard deviation the pixels are divided by: three finite numbers ≥ 1e-6
    resize: Optional[int] = None  # pixels of the short side after resizing, before the centre crop (≥ the crop)
    crop: Optional[int] = None  # the centre crop; must equal model.resolution, the size of the inputs and every map
    interpolation: Optional[Literal[INTERPOLATIONS]] = None  # the resize's filter (nearest, bilinear, bicubic, …)

    def check(self) -> None:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != 3:
                raise ConfigError(key, f"must be three numbers (red, green, blue), got {values!r}")
        if self.mean is not None and not all(math.isfinite(v) for v in self.mean):
            raise ConfigError("mean", f"must be three finite numbers, got {self.mean!r}")
        if self.std is not None and not all(math.isfinite(v) and v >= MIN_STD for v in self.std):
            raise ConfigError("std", f"must be three finite numbers ≥ {MIN_STD:g}, got {self.std!r}")
        for key in ("resize", "crop"):
            value = getattr(self, key)
            if value is not None and not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
                raise ConfigError(key, f"must be {MIN_RESOLUTION} … {MAX_RESOLUTION} pixels, got {value}")
        if self.resize is not None and self.crop is not None and self.resize < self.crop:
            raise ConfigError("resize", f"must be ≥ crop ({self.crop}): the crop is taken from the resized image, "
                                        f"got {self.resize}")


@dataclass(frozen=True)
class ModelConfig:
    #: A torchvision classifier (resnet18, efficientnet_b0, convnext_tiny, …), timm:<name> (pip install
    #: xcv_batch[timm]), or package.module:callable, a function of no arguments that returns the torch.nn.Module.
    arch: str = "resnet18"
    #: torchvision: a weights name of the arch (IMAGENET1K_V1, DEFAULT); timm: pretrained (timm's download); any
    #: arch: none (random init from the job seed) or the path of a state_dict file.
    weights: str = "IMAGENET1K_V1"
    resolution: int = 224  # pixels of the square model input (the centre crop), and of every map (16 … 2048)
    #: Class names: a text file with one name a line, or a list; default: the weights' own (named weights only).
    categories: Union[str, list[str], None] = None
    #: Overrides of the weights' input transform (mean, std, resize, crop, interpolation); needed when the weights
    #: do not say it and ImageNet's is not right (a module:callable or timm model trained on other data).
    preprocessing: Optional[PreprocessingConfig] = None

    @property
    def user_callable(self) -> str | None:
        """The ``package.module:callable`` that building this model imports and calls (the user's code), if any."""
        kind = model_kind(self.arch)
        return self.arch if kind is not None and kind.user_code else None

    def check(self) -> None:
        if not MIN_RESOLUTION <= self.resolution <= MAX_RESOLUTION:
            raise ConfigError("resolution", f"must be {MIN_RESOLUTION} … {MAX_RESOLUTION} pixels, got {self.resolution}")
        check_arch_syntax(self.arch)
        if isinstance(self.categories, list) and not self.categories:
            raise ConfigError("categories", "is an empty list; name every class, or leave it out")
        crop = self.preprocessing.crop if self.preprocessing is not None else None
        if crop is not None and crop != self.resolution:
            raise ConfigError("preprocessing.crop", f"must equal model.resolution ({self.resolution}), the size of the "
                                                    f"inputs and maps; set model.resolution: {crop} instead")


def check_arch_syntax(arch: str) -> None:
    """``arch`` is written as one of the model kinds (:mod:`xcv_batch.models.kinds`: torchvision, ``timm:``,
    ``package.module:callable``, …); whether the name exists is checked by the kind's builder, which imports
    torchvision, timm or the module."""
    kind = model_kind(arch)
    if kind is None:
        raise ConfigError("arch", f"'{arch}' is neither {kinds_text('nor')}")
    if kind.prefix and not kind.name_in(arch).strip():
        example = f", e.g. {kind.example}" if kind.example else ""
        raise ConfigError("arch", f"'{kind.prefix}' needs a model name{example}")
    if not arch.strip():
        raise ConfigError("arch", f"must name {kinds_text('or')}")


class MetricsConfig(Mapping):
    """The job's ``metrics:`` section: each registered metric's settings (None: off), in registration order.

    Read as attributes (``metrics.infidelity``) or as a mapping. Built from the metric registry
    (:mod:`xcv_batch.metrics.registry`), so a new metric needs no edit here; Max-Sensitivity has its own top-level
    ``sensitivity:`` key and is not part of it.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None):
        specs = {spec.name: spec for spec in metric_specs() if spec.in_metrics_section}
        given = dict(settings or {})
        unknown = sorted(set(given) - set(specs))
        if unknown:
            raise ValueError(f"no metric {unknown[0]!r} is registered; registered: {', '.join(specs)}")
        self._settings = {name: given.get(name, spec.default) for name, spec in specs.items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._settings[name]
        except KeyError:
            raise AttributeError(f"no metric {name!r} is registered") from None

    def __getitem__(self, name: str) -> Any:
        return self._settings[name]

    def __iter__(self):
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)

    def __repr__(self) -> str:
        return f"MetricsConfig({self._settings!r})"

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                for name, value in self._settings.items()}


@dataclass(frozen=True)
class ComputeConfig:
    #: Worker processes. auto: one per GPU, or one per two cores when there is no GPU; more than one runs on Ray.
    workers: Union[Literal["auto"], int] = "auto"
    device: str = "auto"  # a torch device (cpu, cuda, cuda:1); auto: cuda when present, else cpu
    batch_size: int = 8  # images explained together (one step of every method)
    #: Perturbed copies per forward pass, for every method. auto: on a GPU, probed from free memory per kind of pass
    #: (forward, forward+backward); on a CPU, 64 up to 64 px and the same pixels per pass above, at least 16 (the
    #: cache is the limit there: 16 at 224 px).
    forward_batch: Union[Literal["auto"], int] = "auto"
    #: fp32 (default) | bf16 | fp16: autocast of the model's convolutions and matmuls; changes the maps slightly.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: Run the methods on a copy of the model with BatchNorm folded into the convolutions and channels_last weights:
    #: the same function, ~1.2x faster, maps equal to the stock model's up to float rounding (relative 1e-6).
    fast_execution: bool = True
    #: torch.compile the copy the methods run on (forward, and forward+backward for the gradient methods); the first
    #: batch pays the compilation. Guided Grad-CAM stays eager: its guided backward reads a switch at backward time,
    #: which a compiled graph would freeze. Maps equal eager's up to float rounding.
    compile: bool = False
    #: Processes that segment images for LIME. auto: one per core this worker's torch threads leave free, inline
    #: when none is; an integer overrides (1: inline).
    segmentation_workers: Union[Literal["auto"], int] = "auto"
    shard_size: int = 32  # images per shard: the unit of output files, retry and resume
    decode_threads: int = 2  # threads per worker decoding and resizing the next images while the model works
    # Ray runs (workers > 1, or RAY_ADDRESS): how lost work is retried and how much is queued on each worker.
    max_attempts: int = 3  # tries of a shard whose worker dies, hangs or raises; then its images one by one
    shard_timeout_s: Optional[float] = None  # a shard running longer counts as hung: its worker is killed
    max_in_flight: int = 2  # shards queued on each worker, so the next starts without a round trip

    def check(self) -> None:
        if self.workers != "auto" and self.workers < 1:
            raise ConfigError("workers", f"must be 'auto' or ≥ 1, got {self.workers}")
        for key in ("batch_size", "shard_size", "decode_threads", "max_attempts", "max_in_flight"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be ≥ 1, got {getattr(self, key)}")
        for key in ("forward_batch", "segmentation_workers"):
            value = getattr(self, key)
            if value != "auto" and value < 1:
                raise ConfigError(key, f"must be 'auto' or ≥ 1, got {value}")
        if self.shard_timeout_s is not None and self.shard_timeout_s <= 0:
            raise ConfigError("shard_timeout_s", f"must be > 0 seconds or null, got {self.shard_timeout_s}")


@dataclass(frozen=True)
class OutputConfig:
    path: str = "results/run"  # the run's OUT: a folder or an s3:// prefix (--out overrides it); never overwritten
    #: Images stored together in one Zarr object (the sharding codec), per array: 1 is one object per image; more
    #: means N/K objects, which disks create and object stores list, copy and bill far more cheaply (a reader still
    #: reads one image). auto: the most that divides compute.shard_size, up to 256 images and 16 MiB of an array's
    #: maps. Not in the fingerprint: the maps are the same either way; a resume keeps what OUT was laid out with.
    images_per_object: Union[Literal["auto"], int] = "auto"
    #: The map format (a registered one; ``zarr``: OUT/attributions.zarr). Not in the fingerprint: the maps are the
    #: same values in any; a resume keeps the format OUT was laid out with.
    format: str = "zarr"
    #: The maps' stored dtype: float16 halves the bytes (about 3 significant digits, range ±65504; larger values
    #: become ±inf). The metrics are computed on the float32 maps before they are stored, so they do not change. Not
    #: in the fingerprint; a resume keeps the dtype OUT was laid out with.
    dtype: Literal["float32", "float16"] = "float32"
    #: The maps' channels: ``all`` (3, as computed) or ``sum`` (1: their sum over the colour channels, what ``show``,
    #: the report and the localisation metrics use), a third of the bytes. Not in the fingerprint; a resume keeps the
    #: choice OUT was laid out with.
    channels: Literal["all", "sum"] = "all"
    #: Store the normalised model inputs beside the maps; false leaves them out (they can be recomputed from the
    #: source and the preprocessing; ``show`` then draws the maps on the source image). Not in the fingerprint; a
    #: resume keeps the choice OUT was laid out with.
    inputs: bool = True

    def check(self) -> None:
        if self.images_per_object != "auto" and self.images_per_object < 1:
            raise ConfigError("images_per_object", f"must be 'auto' or ≥ 1, got {self.images_per_object}")
        if self.format not in format_names():
            raise ConfigError("format", f"must be a registered map format ({', '.join(format_names())}), "
                                        f"got {self.format!r}")


@dataclass(frozen=True)
class Job:
    name: str = "job"  # a label for the run, kept in OUT/job.yaml and the provenance; not in the fingerprint
    seed: int = 0  # every random draw is seeded from (seed, image id, method); 0 … 2**63 − 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    #: The class each map explains: the model's top prediction, or the manifest's label column.
    target: Literal["predicted", "label"] = "predicted"
    methods: Mapping[str, Any] = field(default_factory=dict)  # name → that method's settings dataclass, job order
    #: Add the control maps (random, edges, centre: no model passes, every metric) after the methods; summarize
    #: reports each metric's power to rank the methods above them, and they never enter the rank.
    controls: bool = True
    #: Max-Sensitivity of every map (on by default; null turns it off).
    sensitivity: Optional[SensitivityConfig] = field(default_factory=SensitivityConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def check(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", f"must be 0 … 2**63 − 1, got {self.seed}")
        per_object, shard_size = self.output.images_per_object, self.compute.shard_size
        if per_object != "auto" and shard_size % per_object:
            # Shards run concurrently; two shards writing parts of one object would overwrite each other's images.
            raise ConfigError("output.images_per_object", f"must divide compute.shard_size ({shard_size}) so that "
                                                          f"every shard writes whole objects, got {per_object}")

    def images_per_object(self) -> int:
        """``output.images_per_object``, with ``auto`` resolved for this job's shard size and map size."""
        per_object = self.output.images_per_object
        if per_object != "auto":
            return per_object
        pixels = self.model.resolution ** 2
        maps = pixels * (1 if self.output.channels == "sum" else 3) * (2 if self.output.dtype == "float16" else 4)
        largest = max(maps, 3 * pixels * 4) if self.output.inputs else maps  # the inputs are float32, 3 channels
        return auto_images_per_object(self.compute.shard_size, largest)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "seed": self.seed,
            "data": dataclasses.asdict(self.data),
            "model": dataclasses.asdict(self.model),
            "target": self.target,
            "methods": {name: dataclasses.asdict(s) for name, s in self.methods.items()},
            "controls": self.controls,
            "sensitivity": dataclasses.asdict(self.sensitivity) if self.sensitivity else None,
            "metrics": self.metrics.to_dict(),
            "compute": dataclasses.asdict(self.compute),
            "output": dataclasses.asdict(self.output),
        }

    def fingerprint(self) -> str:
        """Hash of everything that decides the results; not of where they go or how the work is split.

        ``--resume`` compares it: a different fingerprint means the OUT holds another job's results.
        """
        text = json.dumps(self.fingerprint_fields(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def fingerprint_fields(self) -> dict:
        """What :meth:`fingerprint` hashes (also compared key by key when ``--resume`` refuses an OUT)."""
        d = self.to_dict()
        d.pop("output")
        d.pop("name")
        d.pop("controls")  # the control maps it adds are in ``methods``; off, the hash is what it was before them
        # Batching, sharding and workers do not change results; the device, precision and execution do (rounding).
        c = self.compute
        d["compute"] = {"device": c.device, "precision": c.precision, "fast_execution": c.fast_execution}
        # A method's keys that change how its maps are computed, not what they are (its spec's ``unhashed``).
        methods = {spec.name: spec for spec in method_specs()}
        for name, settings in d["methods"].items():
            for key in methods[name].unhashed if name in methods else ():
                settings.pop(key, None)
        # A metric added after runs existed, while off, leaves the hash as it was: their --resume still matches.
        metrics = {spec.name: spec for spec in metric_specs()}
        for name, value in list(d["metrics"].items()):
            if value is None and not (name in metrics and metrics[name].hashed_when_off):
                d["metrics"].pop(name)
        # Likewise model.preprocessing, added later: left out, it changes nothing, and older runs keep their hash.
        if d["model"].get("preprocessing") is None:
            d["model"].pop("preprocessing", None)
        # A weights file can be replaced under the same path: its content decides the results, not its name.
        digest = weights_file_digest(self.model.weights)
        if digest is not None:
            d["model"]["weights_sha256"] = digest
        return d


def weights_file_digest(weights: str) -> str | None:
    """SHA-256 of a local weights file (None for a weights name or ``none``); hashed once per file version."""
    if weights.lower() == "none" or not os.path.isfile(weights):
        return None
    stat = os.stat(weights)
    return _file_digest(os.path.abspath(weights), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the cache, not the hash
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- validation


def yaml_scalar(value: Any) -> str:
    """A scalar as a job file writes it: ``null``, ``true``/``false``, a bare string (``""`` when empty), a number."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


def type_text(tp: Any, prose: bool = False) -> str:
    """A type as a job file writes its values, as the key reference lists it (``auto | int``, ``float | null``); with
    ``prose``, as an error message says it (``'auto' or an integer``, ``a list of numbers or null``)."""
    origin = typing.get_origin(tp)
    joiner = " or " if prose else " | "
    if origin is Literal:
        return joiner.join(repr(a) if prose else yaml_scalar(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return joiner.join(type_text(a, prose) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if prose and origin is list:
        (item,) = typing.get_args(tp)
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, type_text(item, prose))
    if prose and tp in (int, float, str, bool):
        return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}[tp]
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (a scalar, Optional, Union or Literal), or ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(key, f"must be {type_text(tp, prose=True)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"must be {type_text(tp, prose=True)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(key, f"must be null, got {value!r}")
    if origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            try:
                return [_coerce(v, item, key) for v in value]
            except ConfigError:
                pass
        raise ConfigError(key, f"must be {type_text(tp, prose=True)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(key, f"must be {type_text(tp, prose=True)}, got {value!r}")


def dataclass_in(tp: Any) -> type | None:
    """The dataclass that ``tp`` is, or that an Optional ``tp`` wraps."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


def allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def build_dataclass(cls: type, raw: Any, key: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types; ``key`` is where it sits in the job."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"must be a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        where = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise ConfigError(where, f"unknown key; allowed here: {', '.join(sorted(fields))}")
    values = {}
    for name, value in raw.items():
        sub = f"{key}.{name}" if key else name
        tp = hints[name]
        nested = dataclass_in(tp)
        if nested is not None and not (value is None and allows_none(tp)):
            values[name] = build_dataclass(nested, value, sub)
        else:
            values[name] = _coerce(value, tp, sub)
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as err:
            raise err.under(key) if key else err from None
    return obj


def _build_methods(raw: Any) -> dict:
    """The ``methods:`` section: each key names a registered method; a mapping → those settings ({}: the defaults),
    null → off, as a metric or ``sensitivity`` is turned off."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("methods", "must be a mapping of method name → settings")
    methods = {}
    real = [name for name in METHOD_SETTINGS if not is_control(name)]
    for name, settings in raw.items():
        if name not in METHOD_SETTINGS:
            raise ConfigError(f"methods.{name}", f"unknown method; one of: {', '.join(real)}")
        if settings is not None:
            methods[name] = build_dataclass(METHOD_SETTINGS[name], settings, f"methods.{name}")
    # A control map (OUT/job.yaml lists them with the methods) is compared with methods, never one itself.
    if not any(not is_control(name) for name in methods):
        raise ConfigError("methods", f"name at least one method of: {', '.join(real)}")
    return methods


def _build_metrics(raw: Any) -> MetricsConfig:
    """The ``metrics:`` section: each key names a registered metric; absent ones take their spec's default."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("metrics", f"must be a mapping of settings, got {raw!r}")
    specs = {spec.name: spec for spec in metric_specs() if spec.in_metrics_section}
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise ConfigError(f"metrics.{unknown[0]}", f"unknown key; allowed here: {', '.join(sorted(specs))}")
    settings = {}
    for name, value in raw.items():
        spec, key = specs[name], f"metrics.{name}"
        if dataclasses.is_dataclass(spec.settings):
            # a mapping → those settings, null → off (the generic Optional handling of a dataclass)
            settings[name] = None if value is None else build_dataclass(spec.settings, value, key)
        else:
            settings[name] = _coerce(value, spec.settings, key)
    return MetricsConfig(settings)


def job_from_mapping(raw: Any) -> Job:
    if not isinstance(raw, Mapping):
        raise ConfigError("", "a job file must be a YAML mapping (name, seed, data, model, methods, …)")
    raw = dict(raw)
    raw.pop("fingerprint", None)  # present in an OUT/job.yaml, which may be re-run
    raw.pop("weights_sha256", None)  # likewise: the weights file's content when that run started
    methods = _build_methods(raw.pop("methods", None))
    metrics = _build_metrics(raw.pop("metrics", None))
    # sensitivity: absent → the defaults, null → off, a mapping → those settings (the generic Optional handling)
    job = build_dataclass(Job, raw, "")
    if job.controls:  # after the job's methods, in registration order
        methods = {**methods, **{name: METHOD_SETTINGS[name]() for name in control_names() if name not in methods}}
    return dataclasses.replace(job, methods=methods, metrics=metrics)


# ------------------------------------------------------------------------------------------- file and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], value parsed as YAML, so numbers, null and lists work)."""
    if "=" not in text:
        raise ConfigError(cli_or_python("--set", "overrides"), f"expects KEY=VALUE, got {text!r}")
    key, _, value = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(cli_or_python("--set", "overrides"),
                          f"bad key {key!r}: use dotted job keys such as methods.occlusion.window")
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except (AliasRefused, NestingRefused) as err:
        raise ConfigError(key.strip(), err.problem) from None
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is {child!r}, not a mapping; cannot set {'.'.join(parts)}")
            node = child
        node[parts[-1]] = value
    return raw


def read_job_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError("", f"job file {path} does not exist")
    size = os.path.getsize(path)
    if size > MAX_JOB_FILE_BYTES:
        raise ConfigError("", f"{path} is {size} bytes; a job file is at most {MAX_JOB_FILE_BYTES} bytes")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = load_yaml(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError("", f"{path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path} is not a text file (a job file is UTF-8 YAML)") from None
    return raw if raw is not None else {}


def load_job(path: str, overrides: list[str] | None = None, output: str | None = None) -> Job:
    raw = read_job_file(path)
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a YAML mapping")
    return job_from_raw(raw, overrides, output)


def job_from_raw(raw: Mapping, overrides: list[str] | None = None, output: str | None = None) -> Job:
    """A job from the job file's data (a mapping as YAML gives it), ``--set`` overrides and ``--out``: every check
    of :func:`load_job` but reading the file, for jobs that come as a dict (the Python API's :func:`xcv_batch.run`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("", "a job must be a mapping (name, seed, data, model, methods, …)")
    raw = apply_overrides(dict(raw), list(overrides or []))
    if output is not None:
        raw.setdefault("output", {})
        if not isinstance(raw["output"], dict):
            raise ConfigError("output", "must be a mapping with a 'path'")
        raw["output"]["path"] = output
    job = job_from_mapping(raw)
    for name, settings in job.methods.items():  # each method's checks against the rest of the job (resolution …)
        check_job = method_spec(name).check_job
        if check_job is not None:
            check_job(settings, job)
    unlabelled = source_kind(job.data.source).unlabelled
    if job.target == "label" and unlabelled:
        raise ConfigError("target", f"'label' needs a manifest with a label column; {unlabelled}")
    return job


def dump_job(job: Job) -> str:
    """The resolved job as YAML, with its fingerprint (and a weights file's SHA-256), for OUT/job.yaml."""
    d = job.to_dict()
    d["fingerprint"] = job.fingerprint()
    digest = weights_file_digest(job.model.weights)
    if digest is not None:  # kept so that a refused --resume can say the weights file changed
        d["weights_sha256"] = digest
    return yaml.safe_dump(d, sort_keys=False)
