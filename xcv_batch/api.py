"""The Python API: explain a batch of tensors or images in a notebook, or run a job from a script.

:class:`Explainer` takes any classifier — an ``nn.Module`` of your own, or a model name as ``model.arch`` takes it —
and the job file's settings as keyword arguments, and :meth:`Explainer.explain` returns an :class:`Explanation`: the
maps per method, the rows with the Parquet columns, and a panel like ``show``. It runs the same
:class:`~xcv_batch.execution.explain.BatchExplainer` as a ``run``, so with the same images, image ids, seed and
settings it gives the same numbers (seeds derive from the image ids). :func:`run` runs a whole job and opens its
results.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch import nn

from .config import Job, job_from_raw, load_job
from .data.images import load_image, load_mask, preprocess, to_rgb
from .errors import ConfigError, ImageError
from .data.sources import ImageRecord
from .execution.explain import BatchExplainer, error_rows
from .metrics.registry import masks_required_by
from .models.classifier import Classifier
from .models.preprocessing import preprocessing_from
from .output.results import Results, open_results
from .output.store import rows_to_table

#: What ``sensitivity`` means when it is not given: the job file's default (Max-Sensitivity on, with its defaults).
_JOB_DEFAULT = object()


def _plain(settings: Any) -> Any:
    """Job-file data from a settings value: dataclasses become their dicts, mappings are copied recursively."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        return dataclasses.asdict(settings)
    if isinstance(settings, Mapping):
        return {str(k): _plain(v) for k, v in settings.items()}
    return settings


def _methods_mapping(methods: Any) -> dict:
    """``methods`` as the job file writes it: a name, a list of names (their default settings) or a mapping."""
    if isinstance(methods, str):
        return {methods: {}}
    if isinstance(methods, Mapping):
        # None turns a method off, as null does in a job file
        return {name: None if settings is None else _plain(settings) or {} for name, settings in methods.items()}
    if isinstance(methods, Sequence):
        return {str(name): {} for name in methods}
    raise ConfigError("methods", f"must be a method name, a list of names or a mapping name → settings, got {methods!r}")


class Explainer:
    """Attribution maps and quality metrics for batches of images, on any classifier.

    ``model``: an ``nn.Module`` that maps normalised (N, 3, H, W) images to class scores (used as a copy: yours is
    left as it is), or a model name as the job key ``model.arch`` takes it (then ``weights``, ``resolution`` and
    ``categories`` are the ``model.*`` keys). For a module, ``resolution`` is its input size (default: the
    ``preprocessing`` crop, else 224), checked by one blank forward.
    ``methods``: method names (default settings) or a mapping name → settings (the job file's keys as a dict, or the
    settings dataclasses); default: every registered method. ``controls``: also the control maps (random, edges, centre),
    as the job key ``controls: true`` adds them to a run (off here: ``explain`` returns the maps asked for). ``sensitivity``: Max-Sensitivity's settings, None for
    off. ``metrics``: the job's ``metrics:`` section. ``preprocessing``: ``{mean, std, resize, crop, interpolation}``
    for PIL images and paths given to :meth:`explain` (tensors are taken as already normalised); a named model brings
    its own. Every error is the CLI's one-line :class:`~xcv_batch.errors.ConfigError`, naming the job key.
    """

    def __init__(
        self,
        model: nn.Module | str,
        methods: Any = None,
        sensitivity: Any = _JOB_DEFAULT,
        metrics: Any = None,
        device: str = "auto",
        precision: str = "fp32",
        forward_batch: int | str = "auto",
        seed: int = 0,
        preprocessing: Mapping | None = None,
        *,
        target: str = "predicted",
        batch_size: int = 8,
        fast_execution: bool = True,
        weights: str | None = None,
        resolution: int | None = None,
        categories: Sequence[str] | str | None = None,
        controls: bool = False,
    ):
        from .methods import method_specs

        raw: dict[str, Any] = {
            "seed": seed,
            # Images come with each explain call, labels too: no source to list (and no builtin one without labels).
            "data": {"source": "python:explain"},
            "target": target,
            "methods": _methods_mapping([spec.name for spec in method_specs() if not spec.control]
                                        if methods is None else methods),
            "controls": controls,
            "compute": {"device": device, "precision": precision, "forward_batch": forward_batch,
                        "batch_size": batch_size, "fast_execution": fast_execution},
        }
        if sensitivity is not _JOB_DEFAULT:
            raw["sensitivity"] = _plain(sensitivity)
        if metrics is not None:
            raw["metrics"] = _plain(metrics)
        model_keys = {"preprocessing": _plain(preprocessing), "categories": categories,
                      "weights": weights, "resolution": resolution}
        if isinstance(model, str):
            raw["model"] = {"arch": model, **{k: v for k, v in model_keys.items() if v is not None}}
        elif not isinstance(model, nn.Module):
            raise ConfigError("model", f"must be an nn.Module or a model name (model.arch), got {type(model).__name__}")
        elif weights is not None:
            raise ConfigError("weights", "applies to a model name; load the state_dict into your module instead")
        else:
            module_preprocessing = preprocessing_from(preprocessing, resolution)
            # The module's own input size, so that settings checked against the resolution (an occlusion window)
            # are checked against it.
            raw["model"] = {"resolution": module_preprocessing.crop_size}
        #: the settings as a job: validated like a job file, and what :func:`run` would be given for the same numbers
        self.job: Job = job_from_raw(raw)
        if isinstance(model, str):
            #: the methods and metrics on the model, as a run's worker holds them
            self.engine = BatchExplainer.from_job(self.job)
        else:
            from .models.classifier import classifier_from_module

            # A copy: wrapping freezes parameters and methods may swap activations; the caller's model stays as it is.
            classifier = classifier_from_module(copy.deepcopy(model), preprocessing=module_preprocessing,
                                                categories=categories, device=self.job.compute.device)
            self.engine = BatchExplainer(classifier, self.job.methods, self.job.sensitivity, self.job.metrics,
                                         self.job.compute, self.job.seed, self.job.target)
            # What was explained: the module as given, not the job defaults' architecture.
            self.job = dataclasses.replace(self.job, model=dataclasses.replace(
                self.job.model, arch=classifier.arch, weights="as given", preprocessing=None))
        self.classifier: Classifier = self.engine.classifier

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.job.methods)

    def explain(
        self,
        inputs: torch.Tensor | Sequence[Image.Image | str | os.PathLike],
        targets: int | Sequence[int] | torch.Tensor | None = None,
        image_ids: Sequence[str] | None = None,
        labels: Sequence[int | None] | None = None,
        masks: Sequence[Any] | None = None,
        *,
        target: int | Sequence[int] | torch.Tensor | None = None,
        progress: bool = False,
    ) -> "Explanation":
        """Explain ``inputs``: a normalised (N, 3, H, W) tensor, or PIL images or image paths (preprocessed as the
        model's preprocessing says). ``targets`` (or ``target``, as Captum spells it): the class to explain, one
        int for every image or one per image (a sequence or 1-D tensor); default: the predicted one, or ``labels``
        when the explainer's ``target`` mode is 'label'. ``image_ids`` name the images in the rows and seed
        their random draws (default: the paths for paths, ``image-0``, ``image-1``, … otherwise). ``masks``: one
        ground-truth mask per image for localisation — an (H, W) bool tensor or array at the input size, a mask
        file (aligned as a run aligns it), or None. Images go through the model ``batch_size`` at a time. An image
        that cannot be read gets error rows saying why, NaN maps and NaN inputs, as in a run; the others go on.
        ``progress``: a progress bar (tqdm: a widget in a notebook, a line on a terminal) that moves with the
        model's passes, also within one long method."""
        batch, paths, unusable = self._inputs(inputs)
        n = batch.shape[0]
        if target is not None and targets is not None:
            raise ConfigError("target", "give targets or target (Captum's spelling of the same argument), not both")
        targets_name = "target" if target is not None else "targets"
        targets = _per_image(targets_name, target if target is not None else targets, n)
        ids = [str(i) for i in image_ids] if image_ids is not None else [
            str(p) if p is not None else f"image-{i}" for i, p in enumerate(paths)]
        if len(ids) != n or len(set(ids)) != n:
            raise ConfigError("image_ids", f"need {n} distinct ids, one per image, got {len(ids)} ({len(set(ids))} distinct)")
        for name, values in ((targets_name, targets), ("labels", labels), ("masks", masks)):
            if values is not None and len(values) != n:
                raise ConfigError(name, f"need one per image ({n}), got {len(values)}")
        targets = self._checked_classes(targets_name, targets)
        labels = self._checked_classes("labels", labels)
        if targets is None and self.job.target == "label" and (labels is None or any(v is None for v in labels)):
            raise ConfigError("labels", "target is 'label': give every image's label (or explicit targets)")
        masks = self._masks(masks, n, batch.shape[-2:])

        def shared(i: int) -> dict:
            return {"image_id": ids[i], "image_path": paths[i], "index": i,
                    "label": None if labels is None else labels[i]}

        rows: list[dict] = []
        maps = {name: torch.full((n, *batch.shape[1:]), float("nan")) for name in self.methods}
        usable = [i for i in range(n) if i not in unusable]
        step = self.job.compute.batch_size
        bar = _ProgressBar(self.job, len(usable)) if progress else None
        try:
            self._explain_usable(batch, usable, step, ids, labels, masks, targets, shared, rows, maps, bar)
        finally:
            if bar is not None:
                bar.close()
        for i, why in unusable.items():
            record = ImageRecord(ids[i], paths[i], None if labels is None else labels[i])
            rows.extend(error_rows(i, record, self.methods, f"cannot use image: {why}"))
        rows.sort(key=lambda row: row["index"])  # image order; each image's rows in method order
        return Explanation(maps=maps, rows=_as_frame([{**row, "shard": None} for row in rows]),
                           inputs=batch.float().cpu(), image_ids=ids, explainer=self)

    def _explain_usable(self, batch, usable, step, ids, labels, masks, targets, shared, rows, maps, bar) -> None:
        device = self.classifier.device
        for start in range(0, len(usable), step):
            positions = usable[start:start + step]
            chunk = batch[positions].to(device)
            if device.type == "cuda":
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            result = self.engine.explain_batch(
                chunk, [ids[i] for i in positions],
                labels=None if labels is None else [labels[i] for i in positions],
                masks=None if masks is None else [None if masks[i] is None else masks[i].to(device)
                                                  for i in positions],
                targets=None if targets is None else [targets[i] for i in positions],
                progress=bar,
            )
            rows.extend(result.rows([shared(i) for i in positions]))
            for r in result.results:
                if r.attribution is not None:
                    maps[r.method][positions[r.image]] = torch.from_numpy(r.attribution)

    def _warn_if_unnormalised(self, inputs: torch.Tensor) -> None:
        """One warning per explainer for a tensor that looks like raw pixels (uint8, or values far beyond what the
        preprocessing's mean and std give for pixels in [0, 1]): it would be explained as it is, without a word."""
        if getattr(self, "_warned_unnormalised", False):
            return
        prep = self.classifier.preprocessing
        mean, std = torch.tensor(prep.mean, dtype=torch.float64), torch.tensor(prep.std, dtype=torch.float64)
        reach = float(torch.maximum((1 - mean).abs(), mean.abs()).div(std).max())  # |normalised| of pixels in [0, 1]
        values = inputs.detach()
        finite = values[torch.isfinite(values)] if values.is_floating_point() else values
        if values.dtype == torch.uint8:
            why = "is uint8"
        elif finite.numel() and float(finite.abs().max()) > 4 * reach:
            why = f"has values up to {float(finite.abs().max()):.4g}, far beyond ±{reach:.2g} (normalised pixels)"
        else:
            return
        self._warned_unnormalised = True
        warnings.warn(f"inputs {why}: it looks like 0–255 pixels, but a tensor is taken as normalised model inputs; "
                      "normalise it (explainer.classifier.preprocessing.normalize(x / 255)) or pass PIL images or "
                      "paths", UserWarning, stacklevel=3)

    def _checked_classes(self, name: str, values) -> list | None:
        """``targets`` or ``labels`` as a list of class indices (None kept for a missing label), each a class of
        the model."""
        if values is None:
            return None
        if isinstance(values, torch.Tensor):
            if values.ndim != 1:
                raise ConfigError(name, f"must be one class index per image (a 1-D tensor), got shape {tuple(values.shape)}")
            values = values.tolist()
        n_classes = self.classifier.num_classes
        checked = []
        for value in values:
            if value is None and name == "labels":
                checked.append(None)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n_classes:
                raise ConfigError(name, f"{value!r} is not a class of this model (0 … {n_classes - 1})")
            checked.append(int(value))
        return checked

    def _masks(self, masks, n: int, size) -> list | None:
        """One (H, W) bool mask tensor or None per image (None when no image has one); localisation ``true`` needs
        them all, as in a run."""
        wanted = self.engine.wants_masks
        requiring = masks_required_by(self.job.sensitivity, self.job.metrics)
        if requiring is not None and (masks is None or any(m is None for m in masks)):
            raise ConfigError("masks", f"{requiring.job_key} is on: give a mask for every image")
        if masks is None or not wanted:
            return None
        loaded = []
        for mask in masks:
            if isinstance(mask, (str, os.PathLike)):
                mask = load_mask(os.fspath(mask), self.classifier.preprocessing)
            elif mask is not None:
                mask = torch.as_tensor(np.asarray(mask)).bool()
                if tuple(mask.shape) != tuple(size):
                    raise ConfigError("masks", f"a mask must be (H, W) = {tuple(size)}, got {tuple(mask.shape)}")
            loaded.append(mask)
        return loaded

    def _inputs(self, inputs) -> tuple[torch.Tensor, list, dict[int, str]]:
        """The normalised (N, 3, H, W) batch (NaN for an image that cannot be used), per image its path (None for
        tensors and PIL images), and why each unusable image cannot be used."""
        if isinstance(inputs, torch.Tensor):
            if inputs.ndim != 4 or inputs.shape[1] != 3:
                raise ConfigError("inputs", f"a tensor must be (N, 3, H, W) normalised images, got {tuple(inputs.shape)}")
            self._warn_if_unnormalised(inputs)
            return inputs.detach().float(), [None] * inputs.shape[0], {}
        if isinstance(inputs, (str, os.PathLike, Image.Image)):
            inputs = [inputs]
        items = list(inputs)
        if not items:
            raise ConfigError("inputs", "no images given")
        prep = self.classifier.preprocessing
        pixels, paths, unusable = [], [], {}
        for i, item in enumerate(items):
            if not isinstance(item, (Image.Image, str, os.PathLike)):
                raise ConfigError("inputs", f"expected a tensor, PIL images or image paths, got {type(item).__name__}")
            paths.append(None if isinstance(item, Image.Image) else os.fspath(item))
            try:
                if isinstance(item, Image.Image):
                    # As a file is read: turned by its EXIF orientation (on a copy), transparency on white.
                    pixels.append(preprocess(to_rgb(ImageOps.exif_transpose(item)), prep))
                else:
                    pixels.append(load_image(os.fspath(item), prep))
            except ImageError as err:
                unusable[i] = str(err)
                pixels.append(torch.full((3, prep.crop_size, prep.crop_size), float("nan")))
        return prep.normalize(torch.stack(pixels)), paths, unusable


def _per_image(name: str, values, n: int) -> list | None:
    """``targets``/``target`` as a list: one int (or 0-d tensor) for every image, or one per image as given."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor) and values.ndim == 0:
        values = values.item()
    if isinstance(values, np.ndarray) and values.ndim == 0:
        values = values.item()
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        return [int(values)] * n
    if isinstance(values, torch.Tensor):
        if values.ndim != 1:
            raise ConfigError(name, f"must be one class index per image (a 1-D tensor), got shape "
                                    f"{tuple(values.shape)}")
        return values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ConfigError(name, f"must be a class index (an int) or one per image (a sequence or a 1-D "
                                f"tensor), got {type(values).__name__}")
    return list(values)


class _ProgressBar:
    """``explain(progress=True)``: a tqdm bar in forward-equivalents (the work a run's progress weighs), moved by
    the engine's events: rows through the model while a method runs, the rest of its share when it ends."""

    def __init__(self, job: Job, n_images: int):
        from tqdm.auto import tqdm

        from .plan import method_passes

        self.passes = method_passes(job)
        total = n_images * sum(p.work for p in self.passes.values())
        self.bar = tqdm(total=round(total), desc="explaining", unit="fwd-eq", dynamic_ncols=True)
        self.running: dict[str, float] = {}  # method → work credited to its call still running

    def __call__(self, event) -> None:
        from .work import Forwarded, MethodDone, Skipped

        passes = self.passes.get(getattr(event, "method", None))
        if passes is None:
            return
        if isinstance(event, Forwarded) and passes.rows > 0:
            cap = event.images * passes.work
            credited = self.running.get(event.method, 0.0)
            step = min(cap - credited, event.rows * passes.work / passes.rows)
            self.running[event.method] = credited + step
            self._advance(step, event.method)
        elif isinstance(event, (MethodDone, Skipped)):
            self._advance(event.images * passes.work - self.running.pop(event.method, 0.0), event.method)

    def _advance(self, work: float, method: str) -> None:
        if work > 0:
            self.bar.set_postfix_str(method, refresh=False)
            self.bar.update(work)

    def close(self) -> None:
        self.bar.close()


def _as_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a run's Parquet files hold them and :func:`~xcv_batch.output.results.open_results` reads them:
    the same columns, order and types."""
    return rows_to_table(rows).to_pandas()


@dataclass
class Explanation:
    """What :meth:`Explainer.explain` returns.

    ``maps``: method → (N, C, H, W) float32 CPU tensor (NaN for an image whose method failed: its row says why);
    ``rows``: one row per image × method with the Parquet columns; ``inputs``: the normalised batch (CPU). It reads
    like an opened run (:class:`~xcv_batch.output.results.Results`): ``attribution``, ``input_image``,
    ``image_rows``, and :meth:`plot` draws the panel ``show`` draws.
    """

    maps: dict[str, torch.Tensor]
    rows: pd.DataFrame
    inputs: torch.Tensor
    image_ids: list[str]
    explainer: Explainer = field(repr=False)

    @property
    def methods(self) -> list[str]:
        return list(self.maps)

    @property
    def categories(self) -> list[str] | None:
        names = self.explainer.classifier.categories
        return list(names) if names else None

    @property
    def job(self) -> dict:
        return self.explainer.job.to_dict()

    def _position(self, image: str | int) -> int:
        if isinstance(image, int) and not isinstance(image, bool):
            if not -len(self.image_ids) <= image < len(self.image_ids):
                raise ConfigError("image", f"index {image} is out of range for {len(self.image_ids)} images")
            return image % len(self.image_ids)
        try:
            return self.image_ids.index(str(image))
        except ValueError:
            raise ConfigError("image", f"no image {image!r} in this explanation") from None

    def attribution(self, image: str | int, method: str) -> torch.Tensor:
        """The (C, H, W) float32 CPU tensor map of ``method`` for one image (by id or position)."""
        if method not in self.maps:
            raise ConfigError("method", f"{method!r} was not explained; methods: {', '.join(self.maps)}")
        return self.maps[method][self._position(image)]

    def input_image(self, image: str | int) -> torch.Tensor:
        """The image as the model saw it, an (H, W, 3) tensor in [0, 1] (matplotlib's ``imshow`` takes it)."""
        one = self.inputs[self._position(image)][None]  # denormalize takes a batch
        pixels = self.explainer.classifier.preprocessing.denormalize(one)[0]
        return pixels.clamp(0, 1).permute(1, 2, 0)

    def __repr__(self) -> str:
        failed = int((self.rows.status != "ok").sum()) if "status" in self.rows else 0
        shape = tuple(next(iter(self.maps.values())).shape[1:]) if self.maps else ()
        return (f"Explanation({len(self.image_ids)} images × {len(self.maps)} methods "
                f"({', '.join(self.maps)}), maps {shape} each, {len(self.rows)} rows, {failed} failed)")

    def image_rows(self, image: str | int) -> pd.DataFrame:
        return self.rows[self.rows.image_id == self.image_ids[self._position(image)]]

    def plot(self, image: str | int = 0, path: str | None = None):
        """The panel of one image — the image and each method's map over it — as a matplotlib Figure; with
        ``path``, also written there in the format its extension names."""
        from .report.panel import panel_figure, render_panel

        image_id = self.image_ids[self._position(image)]
        if path is not None:
            render_panel(self, image_id, path)
        return panel_figure(self, image_id)


def run(job_or_path: str | os.PathLike | Mapping | Job, out: str | None = None,
        overrides: Sequence[str] | Mapping[str, Any] | None = None, resume: bool = False) -> Results:
    """Run a job — a job file's path, its data as a dict, or a :class:`~xcv_batch.config.Job` — and open its results.

    ``overrides``: ``["methods.occlusion.window=8", …]`` as ``--set`` takes them, or a mapping of dotted keys to
    values; ``out`` replaces ``output.path``; ``resume`` continues a run in ``out`` as ``--resume`` does.
    """
    from .driver import run_job

    if isinstance(overrides, Mapping):
        import json

        overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    overrides = list(overrides or [])
    if isinstance(job_or_path, Job):
        job = job_from_raw(job_or_path.to_dict(), overrides, out)
    elif isinstance(job_or_path, Mapping):
        job = job_from_raw(_plain(job_or_path), overrides, out)
    else:
        job = load_job(os.fspath(job_or_path), overrides, out)
    report = run_job(job, resume=resume)
    print(report.final_line(), flush=True)  # the CLI's closing line: how many, how long, where
    return open_results(report.out)
