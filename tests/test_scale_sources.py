"""Sources at scale: WebDataset tar shards and Parquet files with image bytes, read in place, give the same rows and
maps as the same images given as files."""

from __future__ import annotations

import io
import os
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage

from map_checks import assert_same_map
from xcv_batch.config import job_from_raw
from xcv_batch.data.packed import expand_braces, reader_of
from xcv_batch.data.sources import ImageRecord, list_images
from xcv_batch.driver import run_job
from xcv_batch.errors import DataError, ImageError
from xcv_batch.output.results import open_results

PHOTOS = ("camera.png", "chelsea.png", "coffee.png")
BROKEN = b"this is not a picture"
LABELS = (7, 281, 504, 3)  # the three photos, then the broken one

JOB = {
    "name": "scale-sources",
    "seed": 5,
    "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
    "methods": {"occlusion": {"window": 8, "stride": 8}, "guided_gradcam": {}},
    "sensitivity": None,
    "controls": False,  # the sources' images against the same files; the control maps have tests of their own
    "target": "label",
    "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "shard_size": 2},
}


def _images() -> list[tuple[str, bytes]]:
    """(name, bytes) of three photos and one undecodable .jpg, in the order their ids sort in every source."""
    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    named = []
    for number, name in enumerate(PHOTOS):
        with open(os.path.join(folder, name), "rb") as handle:
            named.append((f"{number}_{name}", handle.read()))
    return [*named, ("3_broken.jpg", BROKEN)]


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    archive.addfile(member, io.BytesIO(data))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same four images and labels as files with a label manifest, as two tar shards, and as one Parquet file."""
    root = tmp_path_factory.mktemp("scale")
    images = _images()
    (root / "files").mkdir()
    lines = ["path,label"]
    for (name, data), label in zip(images, LABELS):
        (root / "files" / name).write_bytes(data)
        lines.append(f"{name},{label}")
    (root / "files" / "labels.csv").write_text("\n".join(lines) + "\n")

    (root / "shards").mkdir()
    for shard, pairs in enumerate((zip(images[:2], LABELS[:2]), zip(images[2:], LABELS[2:]))):
        with tarfile.open(root / "shards" / f"train-{shard:06d}.tar", "w") as archive:
            for (name, data), label in pairs:
                key = name.rsplit(".", 1)[0]
                _add(archive, name, data)
                _add(archive, f"{key}.cls", f"{label}\n".encode())
                _add(archive, f"{key}.json", b"{}")  # other fields of a key are left alone

    table = pa.table({
        "image": pa.array([{"bytes": data, "path": name} for name, data in images],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "label": pa.array(LABELS, pa.int64()),
    })
    pq.write_table(table, root / "photos.parquet", row_group_size=3)  # rows 0-2 and 3 in two row groups
    return root


def _run(root, source: str, name: str) -> str:
    out = str(root / "runs" / name)
    run_job(job_from_raw({**JOB, "data": {"source": source}, "output": {"path": out}}), stream=open(os.devnull, "w"))
    return out


def test_brace_ranges_expand_with_their_zero_padding():
    assert expand_braces("s/train-{000008..000011}.tar") == [f"s/train-{n:06d}.tar" for n in range(8, 12)]
    assert expand_braces("{a,b}/x-{1..2}.tar") == ["a/x-1.tar", "a/x-2.tar", "b/x-1.tar", "b/x-2.tar"]
    assert expand_braces("one.tar") == ["one.tar"]
    with pytest.raises(DataError, match=r"write a brace range as \{000\.\.099\}"):
        expand_braces("x-{1-3}.tar")


def test_tar_shards_and_parquet_rows_are_listed_with_stable_ids_labels_and_where_their_bytes_are(sources):
    shards = str(sources / "shards" / "train-{000000..000001}.tar")
    records = list_images(shards)
    assert [r.image_id for r in records] == [
        "train-000000.tar/0_camera", "train-000000.tar/1_chelsea", "train-000001.tar/2_coffee",
        "train-000001.tar/3_broken"]
    assert [r.label for r in records] == list(LABELS)
    assert {r.reader for r in records} == {".packed:read_tar_member"}
    assert records[0].path.startswith(str(sources / "shards" / "train-000000.tar") + "#0_camera.png@512+")
    # one shard alone: the same ids for its images, so seeds do not depend on how shards are grouped
    assert [r.image_id for r in list_images(str(sources / "shards" / "train-000001.tar"))] == [
        r.image_id for r in records[2:]]

    rows = list_images(str(sources / "photos.parquet"))
    assert [(r.image_id, r.path.rsplit("#", 1)[1], r.label) for r in rows] == [
        ("photos.parquet/000000", "0/0", 7), ("photos.parquet/000001", "0/1", 281),
        ("photos.parquet/000002", "0/2", 504), ("photos.parquet/000003", "1/0", 3)]
    assert {r.reader for r in rows} == {".packed:read_parquet_row"}
    # the rows' image_path alone names its reader again; a file's path names none
    assert [reader_of(r.path) for r in (records[0], rows[3])] == [r.reader for r in (records[0], rows[3])]
    assert reader_of(str(sources / "files" / "0_camera.png")) == "" == reader_of("s3://b/x.parquet")


def test_a_parquet_manifest_of_paths_is_still_a_manifest(sources, tmp_path):
    pq.write_table(pa.table({"path": ["0_camera.png", "2_coffee.png"], "label": [1, 2]}),
                   sources / "files" / "manifest.parquet")
    records = list_images(str(sources / "files" / "manifest.parquet"))
    assert records == [ImageRecord("0_camera.png", str(sources / "files" / "0_camera.png"), 1),
                       ImageRecord("2_coffee.png", str(sources / "files" / "2_coffee.png"), 2)]
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.tar is not a readable uncompressed tar file \(empty file\)$"):
        list_images(str(tmp_path / "empty.tar"))
    with tarfile.open(tmp_path / "dotted.tar", "w") as archive:  # as `tar -cf dotted.tar .` names members
        _add(archive, "./a/0001.seg.png", _images()[0][1])
        _add(archive, "./a/0001.cls", b"12")
    assert [(r.image_id, r.label) for r in list_images(str(tmp_path / "dotted.tar"))] == [("dotted.tar/a/0001", 12)]
    with tarfile.open(tmp_path / "nothing.tar", "w") as archive:
        _add(archive, "a.json", b"{}")
    with pytest.raises(DataError, match=r"nothing\.tar holds no images"):
        list_images(str(tmp_path / "nothing.tar"))
    with pytest.raises(DataError, match=r"cannot read .*missing-000001\.tar"):
        list_images(str(tmp_path / "missing-{000001..000002}.tar"))


def test_runs_from_tar_shards_and_parquet_bytes_equal_the_run_from_the_same_files(sources):
    runs = {name: open_results(_run(sources, source, name)) for name, source in (
        ("files", str(sources / "files" / "labels.csv")),
        ("tar", str(sources / "shards" / "train-{000000..000001}.tar")),
        ("parquet", str(sources / "photos.parquet")))}
    columns = ["method", "status", "target", "target_prob"]
    expected = runs["files"].rows().sort_values(["image_id", "method"]).reset_index(drop=True)
    assert expected.status.tolist() == ["ok"] * 6 + ["error"] * 2  # the broken image: its error rows
    assert expected.target.tolist()[:6] == [7, 7, 281, 281, 504, 504]  # target: label, from the manifest
    for name in ("tar", "parquet"):
        rows = runs[name].rows().sort_values(["image_id", "method"]).reset_index(drop=True)
        assert rows[columns].equals(expected[columns]), name  # labels from .cls and the label column
        assert "cannot" in rows.error.iloc[-1] or "decode" in rows.error.iloc[-1]
        ids, files_ids = list(runs[name].image_ids), list(runs["files"].image_ids)
        largest = {}
        for image, file_image in zip(ids[:3], files_ids[:3]):
            assert np.array_equal(runs[name].input_image(image), runs["files"].input_image(file_image))
            for method in JOB["methods"]:
                found = runs[name].attribution(image, method)
                largest[image, method] = float(np.abs(found).max())
                assert_same_map(found, runs["files"].attribution(file_image, method), str((name, image, method)))
        # the maps compared are not blank (a random ResNet's Guided Grad-CAM is zero on some photos)
        assert all(largest[image, "occlusion"] > 0 for image in ids[:3]) and largest[ids[2], "guided_gradcam"] > 0


def test_a_truncated_shard_fails_its_member_as_an_error_row_not_the_run(sources, tmp_path):
    shard = tmp_path / "cut.tar"
    shutil.copy(sources / "shards" / "train-000000.tar", shard)
    records = list_images(str(shard))
    from xcv_batch.data.images import read_bytes

    assert read_bytes(records[0].path, records[0].reader) == _images()[0][1]
    with open(shard, "r+b") as handle:
        handle.truncate(int(records[1].path.rsplit("@", 1)[1].split("+")[0]) + 10)
    with pytest.raises(ImageError, match="ended .* bytes early"):
        read_bytes(records[1].path, records[1].reader)


def test_shards_and_parquet_at_a_url_are_listed_and_read_through_fsspec(sources):
    import fsspec

    from xcv_batch.data.images import read_bytes

    fs = fsspec.filesystem("memory")
    for name in ("train-000000.tar", "train-000001.tar"):
        fs.pipe(f"/scale-sources/{name}", (sources / "shards" / name).read_bytes())
    fs.pipe("/scale-sources/photos.parquet", (sources / "photos.parquet").read_bytes())
    try:
        shards = list_images("memory://scale-sources/train-{000000..000001}.tar")
        rows = list_images("memory://scale-sources/photos.parquet")
        assert [r.image_id for r in shards] == [r.image_id for r in list_images(
            str(sources / "shards" / "train-{000000..000001}.tar"))]
        assert [r.image_id for r in rows] == [f"photos.parquet/{n:06d}" for n in range(4)]
        images = _images()
        for listed in (shards, rows):
            assert [read_bytes(r.path, r.reader) for r in listed] == [data for _, data in images]
            assert [r.label for r in listed] == list(LABELS)
    finally:
        fs.rm("/scale-sources", recursive=True)


def test_each_parquet_file_of_a_brace_pattern_must_hold_image_bytes(sources, tmp_path):
    shutil.copy(sources / "photos.parquet", tmp_path / "part-1.parquet")
    pq.write_table(pa.table({"path": ["a.png"]}), tmp_path / "part-2.parquet")
    assert [r.image_id for r in list_images(str(tmp_path / "part-{1..1}.parquet"))] == [
        f"part-1.parquet/{n:06d}" for n in range(4)]
    with pytest.raises(DataError, match=r"part-2\.parquet has no 'image' column of bytes"):
        list_images(str(tmp_path / "part-{1..2}.parquet"))


def test_a_parquet_file_rewritten_in_the_same_process_is_read_again(tmp_path):
    from xcv_batch.data.images import read_bytes

    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    path = tmp_path / "again.parquet"
    for data in (b"first", b"second, longer"):
        pq.write_table(pa.table({"image": pa.array([{"bytes": data, "path": None}], kind)}), path)
        (record,) = list_images(str(path))
        assert read_bytes(record.path, record.reader) == data
    pq.write_table(pa.table({"image": pa.array([], kind)}), path)  # emptied after listing: an error row, no crash
    with pytest.raises(ImageError, match="cannot read file: .*again.parquet"):
        read_bytes(record.path, record.reader)
