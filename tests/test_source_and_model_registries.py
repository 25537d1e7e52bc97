"""One registration per data source and per model kind: a toy of each, registered from this file as the "Extending"
recipes say (verbatim: the same functions and specs), lists, validates, runs end to end in-process and reads through
the Explainer; unregistered, it is gone again."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image
from torch import nn

from xcv_batch.api import Explainer
from xcv_batch.config import ModelConfig, check_arch_syntax, job_from_mapping, job_from_raw
from xcv_batch.data.registry import SourceSpec, register, registered, source_kind, source_specs
from xcv_batch.data.sources import ImageRecord, list_images
from xcv_batch.driver import run_job
from xcv_batch.errors import ConfigError, DataError
from xcv_batch.models import kinds
from xcv_batch.models.classifier import build_classifier, check_arch
from xcv_batch.models.kinds import ModelKindSpec, model_kind
from xcv_batch.models.source import BuiltModel
from xcv_batch.models.state_dict import seeded
from xcv_batch.output.results import open_results

# ------------------------------------------------------------------------- "A new data source", verbatim


def list_toy(source: str):
    """data.source "toy:N" → N generated images, in any order (the run sorts them by image_id)."""
    count = source.removeprefix("toy:")
    if not count.isdigit() or int(count) < 1:
        raise DataError(f"data.source {source}: write toy:N with N ≥ 1, e.g. toy:4")
    for i in range(int(count)):
        yield ImageRecord(image_id=f"toy-{i:03d}.png", path=f"toy:{i}")


def read_toy(path: str) -> bytes:
    """A record's path → the encoded image; the worker decodes it as it decodes a file."""
    pixels = np.random.default_rng(int(path.removeprefix("toy:"))).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


TOY_SOURCE = SourceSpec(
    name="toy",
    matches=lambda source: source.startswith("toy:"),  # a test of the string: no I/O
    lister=f"{__name__}:list_toy",                     # module:function; ".module" is relative to xcv_batch.data
    reader=f"{__name__}:read_toy",                     # leave out when the paths are files or URLs
    written="toy:N",                                   # how it is written, in "give a folder, …, or toy:N"
    unlabelled="toy images have no labels",            # leave out when records may carry labels
)

# --------------------------------------------------------------------------- "A new model kind", verbatim


def check(name: str) -> None:
    """The name exists (cheap: nothing is built), else a one-line ConfigError."""
    if not (name.startswith("cnn") and name[3:].isdigit()):
        raise ConfigError("model.arch", f"'toy:{name}' is not a toy model; write toy:cnn<width>, e.g. toy:cnn8")


def build(name: str, weights: str, seed: int, resolution: int, pinned=None) -> BuiltModel:
    """The network with its weights (here: none, a random initialisation from the job seed)."""
    check(name)
    if weights.lower() != "none":
        raise ConfigError("model.weights", f"toy:{name} has no published weights; use none")
    width = int(name[3:])
    with seeded(seed):
        net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(width, 4))
    return BuiltModel(net, preprocessing=None, categories=None, weights="none")


def describe(name: str, weights: str, resolution: int):
    """What build gives for preprocessing and class names, without building (None, None: ImageNet's, no names)."""
    return None, None


TOY_KIND = ModelKindSpec(
    name="toy",
    builder=__name__,            # the module with check, build, describe; ".module" is relative to xcv_batch.models
    written="toy:<name>",        # how it is written, in "neither a torchvision classifier, …, nor toy:<name>"
    prefix="toy:",               # the arch starts with it; the builder gets the rest ("cnn8")
    example="toy:cnn8",          # for "'toy:' needs a model name, e.g. toy:cnn8"
)

# ------------------------------------------------------------------------------------------------- tests

JOB = {
    "name": "toys", "seed": 0,
    "data": {"source": "toy:5"},
    "model": {"arch": "toy:cnn8", "weights": "none", "resolution": 32},
    "methods": {"occlusion": {"window": 8, "stride": 8}},
    "sensitivity": None,
    "controls": False,  # the toys' rows against the files'; the control maps have tests of their own
    "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "shard_size": 2},
}


def test_the_built_in_kinds_are_registered_in_order():
    assert [spec.name for spec in source_specs()] == ["files", "builtin", "tar", "parquet"]
    assert [spec.name for spec in kinds.model_kind_specs()] == ["torchvision", "timm", "callable"]
    assert [model_kind(a).name for a in ("resnet18", "timm:resnet18", "custom_models:tiny_cnn", "")] == [
        "torchvision", "timm", "callable", "torchvision"]
    assert model_kind("a b:c") is None
    assert [source_kind(s).name for s in ("builtin:skimage", "builtin:nothing", "images/", "s3://b/*.png",
                                          "s3://b/train-{000..009}.tar", "m.csv", "m.parquet")] == [
        "builtin", "builtin", "files", "files", "tar", "files", "parquet"]


def test_a_source_registered_from_a_test_file_lists_its_records_sorted_with_its_reader(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(DataError, match=r"does not exist; give a folder, a glob pattern, a \.txt/\.csv/\.parquet "
                                        r"manifest, builtin:skimage, WebDataset tar shards "
                                        r"\(shards/train-\{000\.\.099\}\.tar\), or a \.parquet file with an "
                                        r"'image' column of bytes$"):
        list_images(missing)
    with registered(TOY_SOURCE):
        assert source_kind("toy:3") is TOY_SOURCE and source_kind("builtin:skimage").name == "builtin"
        records = list_images("toy:12", limit=3)
        assert records == [ImageRecord(f"toy-{i:03d}.png", f"toy:{i}", reader=f"{__name__}:read_toy")
                           for i in range(3)]
        assert [r.image_id for r in list_images("toy:12")] == [f"toy-{i:03d}.png" for i in range(12)]
        with pytest.raises(DataError, match="write toy:N with N ≥ 1"):
            list_images("toy:zero")
        # the message that lists what data.source may be names the new kind too
        with pytest.raises(DataError, match=r"column of bytes, or toy:N$"):
            list_images(missing)
        with pytest.raises(ConfigError, match="^target: 'label' needs a manifest with a label column; toy images "
                                              "have no labels$"):
            job_from_raw({**JOB, "target": "label"})
    with pytest.raises(DataError, match=r"data\.source toy:3 does not exist"):  # gone: a path again
        list_images("toy:3")
    with pytest.raises(ConfigError, match="builtin images have no labels$"):
        job_from_raw({**JOB, "data": {"source": "builtin:skimage"}, "target": "label"})


def test_a_model_kind_registered_from_a_test_file_validates_and_builds():
    with pytest.raises(ConfigError, match=r"^model\.arch: 'toy:' is neither a torchvision classifier, "
                                          r"timm:<name>, nor package\.module:callable$"):
        job_from_mapping({**JOB, "model": {"arch": "toy:"}})
    assert ModelConfig(arch="toy:cnn8").user_callable == "toy:cnn8"  # unregistered: a module 'toy' to import
    with kinds.registered(TOY_KIND):
        assert model_kind("toy:cnn8") is TOY_KIND  # before package.module:callable, which it also matches
        assert ModelConfig(arch="toy:cnn8").user_callable is None
        assert ModelConfig(arch="custom_models:tiny_cnn").user_callable == "custom_models:tiny_cnn"
        with pytest.raises(ConfigError, match=r"^arch: 'toy:' needs a model name, e.g\. toy:cnn8$"):
            check_arch_syntax("toy:")
        with pytest.raises(ConfigError, match=r"^arch: 'a b:c' is neither a torchvision classifier, timm:<name>, "
                                              r"package\.module:callable, nor toy:<name>$"):
            check_arch_syntax("a b:c")
        with pytest.raises(ConfigError, match=r"^model\.arch: 'toy:mlp' is not a toy model"):
            check_arch("toy:mlp")
        classifier = build_classifier("toy:cnn8", "none", 32, seed=0)
        assert classifier.num_classes == 4 and classifier.arch == "toy:cnn8" and classifier.weights == "none"
        assert classifier.preprocessing.crop_size == 32  # ImageNet's at the resolution: describe said nothing
        again = build_classifier("toy:cnn8", "none", 32, seed=0)
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in
                   zip(classifier.net.state_dict().values(), again.net.state_dict().values()))  # seeded
    assert model_kind("toy:cnn8").name == "callable"


def _write_toy_files(folder, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        (folder / f"toy-{i:03d}.png").write_bytes(read_toy(f"toy:{i}"))


def test_a_run_reads_the_toy_source_with_the_toy_model_as_it_reads_the_same_images_as_files(tmp_path):
    """In-process (compute.workers: 1): Ray workers would import this test module by name to read the images."""
    _write_toy_files(tmp_path / "files", 5)
    with registered(TOY_SOURCE), kinds.registered(TOY_KIND):
        toy = job_from_raw({**JOB, "output": {"path": str(tmp_path / "toy")}})
        files = job_from_raw({**JOB, "data": {"source": str(tmp_path / "files")},
                              "output": {"path": str(tmp_path / "from-files")}})
        for job in (toy, files):
            run_job(job, stream=open(os.devnull, "w"))
        explainer = Explainer("toy:cnn8", methods={"occlusion": {"window": 8, "stride": 8}}, sensitivity=None,
                              weights="none", resolution=32, device="cpu")
        explained = explainer.explain([str(tmp_path / "files" / f"toy-{i:03d}.png") for i in range(5)],
                                      image_ids=[f"toy-{i:03d}.png" for i in range(5)])

    from_toy, from_files = open_results(str(tmp_path / "toy")), open_results(str(tmp_path / "from-files"))
    ids = [f"toy-{i:03d}.png" for i in range(5)]
    assert list(from_toy.image_ids) == ids == list(from_files.image_ids)
    columns = ["image_id", "method", "status", "target", "target_prob"]
    toy_rows = from_toy.rows().sort_values("image_id")
    assert toy_rows.status.tolist() == ["ok"] * 5 and toy_rows.image_path.tolist() == [f"toy:{i}" for i in range(5)]
    assert toy_rows[columns].reset_index(drop=True).equals(
        from_files.rows().sort_values("image_id")[columns].reset_index(drop=True))
    for image in ids:
        toy_map = from_toy.attribution(image, "occlusion")
        assert np.isfinite(toy_map).all() and np.abs(toy_map).max() > 0
        assert np.array_equal(toy_map, from_files.attribution(image, "occlusion"))
        assert np.array_equal(from_toy.input_image(image), from_files.input_image(image))
        np.testing.assert_allclose(explained.attribution(image, "occlusion"), toy_map, rtol=1e-5, atol=1e-6)
