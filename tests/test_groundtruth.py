"""Known answers: the synthetic dataset, a model trained on it, and localisation metrics on hand-made maps."""

from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from xcv_batch.data.sources import list_images
from xcv_batch.data.images import load_image, load_mask
from xcv_batch.errors import ConfigError, DataError
from xcv_batch.metrics.localisation import (
    localisation_metrics,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from xcv_batch.metrics.registry import metric_spec
from xcv_batch.methods import build_method
from xcv_batch.methods.settings import OcclusionSettings
from xcv_batch.models.classifier import build_classifier, read_categories
from xcv_batch.groundtruth.synth import CLASS_COLOURS, DISTRACTOR_COLOURS, generate
from xcv_batch.groundtruth.train import train

# ------------------------------------------------------------------------------------ localisation, by hand

NAN = float("nan")


def maps_from_sums(sums: list[list[list[float]]]) -> torch.Tensor:
    """(B, 3, H, W) maps whose channel sums are ``sums``, spread unevenly over the channels (sum, not ch. 0)."""
    total = torch.tensor(sums, dtype=torch.float32)
    return torch.stack([total * 0.5, total * 0.25, total * 0.25], dim=1)


# Each case: the channel-summed map, the mask, and (pointing game, relevance mass, relevance rank) by hand.
CASES = {
    # r⁺ = [[1,3,0],[0,2,0]]: max 3 in the mask; mass (3+2)/6; top-3 = {3, 2, 1}, two in the mask.
    "plain": ([[1, 3, -2], [0, 2, 0]], [[0, 1, 0], [0, 1, 1]], (1.0, 5 / 6, 2 / 3)),
    # Three tied maxima, one in the mask: 1/3 everywhere (expected value over tie-breaking).
    "tied maxima": ([[2, 2, 0], [2, 0, -1]], [[1, 0, 0], [0, 0, 0]], (1 / 3, 2 / 6, 1 / 3)),
    # No positive relevance: a constant r⁺ = 0, chance level |mask| / (H·W) = 1/6 (|r| would point at -6).
    "all negative": ([[-1, -2, -3], [-4, -5, -6]], [[0, 1, 0], [0, 0, 0]], (1 / 6, 1 / 6, 1 / 6)),
    "all zero": ([[0, 0, 0], [0, 0, 0]], [[1, 1, 0], [0, 0, 0]], (1 / 3, 1 / 3, 1 / 3)),
    # Negative relevance inside the mask does not cancel positive: mass 4 / (4 + 1); top-2 = {4, 1}.
    "negative in mask": ([[4, -4, 0], [1, 0, 0]], [[1, 1, 0], [0, 0, 0]], (1.0, 4 / 5, 1 / 2)),
    # Ties at the K-th place: top-3 = {5} + 2 of the three 3s, each in the mask with probability 1/3.
    "tied at K": ([[5, 3, 3], [3, 0, 0]], [[1, 1, 0], [0, 1, 0]], (1.0, 8 / 14, (1 + 2 / 3) / 3)),
    # Nothing to find: NaN.
    "empty mask": ([[1, 2, 3], [4, 5, 6]], [[0, 0, 0], [0, 0, 0]], (NAN, NAN, NAN)),
}


def test_localisation_metrics_equal_hand_computed_values():
    names = list(CASES)
    attributions = maps_from_sums([CASES[n][0] for n in names])
    masks = torch.tensor([CASES[n][1] for n in names], dtype=torch.bool)
    expected = torch.tensor([CASES[n][2] for n in names], dtype=torch.float64)
    got = torch.stack(
        [pointing_game(attributions, masks), relevance_mass_accuracy(attributions, masks),
         relevance_rank_accuracy(attributions, masks)], dim=1)
    assert got.dtype == torch.float64 and got.shape == (len(names), 3)
    for i, name in enumerate(names):
        assert torch.allclose(got[i], expected[i], atol=1e-12, equal_nan=True), (name, got[i], expected[i])


LOCALISATION_COLUMNS = ["pointing_game", "relevance_mass", "relevance_rank"]


def test_localisation_columns_are_registered_with_the_direction_a_map_on_the_object_scores():
    combined = localisation_metrics(maps_from_sums([CASES["plain"][0]]), torch.tensor([CASES["plain"][1]]).bool())
    columns = metric_spec("localisation").columns
    assert list(combined) == [column.name for column in columns] == LOCALISATION_COLUMNS
    assert [float(v) for v in combined.values()] == pytest.approx([1.0, 5 / 6, 2 / 3])
    # A map whose relevance lies on the object is the better one, a map that lies beside it the worse.
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]]], dtype=torch.bool)
    on_object = localisation_metrics(maps_from_sums([[[3, 2, 0], [1, 0, 0]]]), mask)
    beside = localisation_metrics(maps_from_sums([[[0, 0, 3], [0, 2, 1]]]), mask)
    for column in columns:
        good, bad = float(on_object[column.name]), float(beside[column.name])
        assert good != bad, column.name
        assert column.direction == ("lower" if good < bad else "higher"), column.name


def reference_metrics(relevance: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """One image, no ties: argmax, the plain mass ratio and an argsort top-K (as Quantus computes them)."""
    r, m = np.maximum(relevance.ravel(), 0), mask.ravel()
    k = int(m.sum())
    top_k = np.argsort(r)[::-1][:k]
    return float(m[np.argmax(r)]), float(r[m].sum() / r.sum()), float(m[top_k].sum() / k)


def test_batched_metrics_equal_a_per_image_reference_and_ignore_positive_scale():
    generator = torch.Generator().manual_seed(0)
    # Continuous values, mostly positive: no ties among the top K (zeros of r⁺ tie, which argsort breaks anyhow).
    attributions = torch.rand(6, 3, 9, 11, generator=generator, dtype=torch.float64) - 0.25
    masks = torch.rand(6, 9, 11, generator=generator) < torch.linspace(0.05, 0.5, 6).view(6, 1, 1)
    assert ((attributions.sum(1) > 0).flatten(1).sum(1) > masks.flatten(1).sum(1)).all()
    batched = torch.stack(list(localisation_metrics(attributions, masks).values()), dim=1)
    for i in range(6):
        expected = reference_metrics(attributions[i].sum(0).numpy(), masks[i].numpy())
        assert batched[i].tolist() == pytest.approx(expected, abs=1e-12)
        alone = torch.stack(list(localisation_metrics(attributions[i:i + 1] * 7.5, masks[i:i + 1]).values()), dim=1)
        assert torch.allclose(alone[0], batched[i], atol=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="masks must be"):
        pointing_game(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        relevance_mass_accuracy(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ synth


def file_digests(folder: str) -> dict[str, str]:
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(str(tmp_path / name), n_images=12, size=32, n_classes=4, seed=seed)
    a, b, c = (file_digests(str(tmp_path / name)) for name in "abc")
    assert len(a) == 12 * 2 + 5 and a == b
    assert a["images/00000.png"] != c["images/00000.png"]


def test_manifests_masks_and_categories(tmp_path):
    manifest = generate(str(tmp_path / "d"), n_images=40, size=48, n_classes=4, seed=0, test_fraction=0.25)
    folder = os.path.dirname(manifest)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "mask_path", "split"]
    labels = [int(r["label"]) for r in rows]
    assert sorted(labels) == sorted(list(range(4)) * 10)  # balanced
    test_labels = [int(r["label"]) for r in rows if r["split"] == "test"]
    assert sorted(test_labels) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3  # 0.25 × 10 a class, rounded half up
    assert read_categories(os.path.join(folder, "categories.txt")) == ("red circle", "blue circle", "red cross",
                                                                        "blue cross")
    # The split manifests are ordinary data sources, with masks.
    test_records = list_images(os.path.join(folder, "test.csv"))
    assert len(test_records) == len(test_labels) and all(r.mask_path for r in test_records)
    assert {r.image_id for r in test_records} == {r["path"] for r in rows if r["split"] == "test"}

    preprocessing = build_classifier("resnet18", "none", 48, seed=0).preprocessing
    class_rgb = np.array(list(CLASS_COLOURS.values()), dtype=float) / 255
    for record, row in zip(list_images(manifest)[:8], rows[:8]):
        pixels = load_image(record.path, preprocessing)
        mask = load_mask(record.mask_path, preprocessing)
        full_mask = np.asarray(Image.open(os.path.join(folder, row["mask_path"]))) > 0
        # The whole object survives the centre crop (its area scales with the resize), in the class colour.
        scale = (preprocessing.resize_size / 48) ** 2
        assert 0.8 < float(mask.sum()) / (full_mask.sum() * scale) < 1.25, record.image_id
        inside = pixels[:, mask].mean(dim=1).numpy()
        nearest = np.argmin(np.abs(class_rgb - inside).sum(axis=1))
        assert nearest == int(row["label"]) % 2, (record.image_id, inside)


def test_distractors_never_use_a_class_colour(tmp_path):
    # Away from the object (mask dilated by 2 px), no pixel is close to a class colour: only the object is.
    manifest = generate(str(tmp_path / "d"), n_images=30, size=48, n_classes=8, seed=1)
    folder = os.path.dirname(manifest)
    class_rgb = np.array(list(CLASS_COLOURS.values()), dtype=float)
    assert not set(CLASS_COLOURS) & set(DISTRACTOR_COLOURS)
    with open(manifest, newline="") as handle:
        for row in csv.DictReader(handle):
            image = np.asarray(Image.open(os.path.join(folder, row["path"])), dtype=float)
            mask = torch.from_numpy(np.asarray(Image.open(os.path.join(folder, row["mask_path"]))) > 0).float()
            near_object = torch.nn.functional.max_pool2d(mask[None, None], 5, stride=1, padding=2)[0, 0].bool()
            distance = np.abs(image[:, :, None, :] - class_rgb[None, None]).max(axis=-1).min(axis=-1)
            assert distance[~near_object.numpy()].min() > 60, row["path"]
            assert distance[mask.bool().numpy()].mean() < 30


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="n_classes"):
        generate(str(tmp_path), n_images=20, n_classes=9)
    with pytest.raises(ConfigError, match="n_images"):
        generate(str(tmp_path), n_images=3, n_classes=2)


# ------------------------------------------------------------------------------ train, then localise

RESOLUTION = 32
N_CLASSES = 2  # red vs blue circle: learnt in a few hundred images; 4 classes (shape too) need minutes
TRAIN_IMAGES = 480
TRAIN_EPOCHS = 3


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads that fight other jobs run several × slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A small dataset at 32 px and a ResNet-18 trained on it briefly (the slow part of this file)."""
    folder = str(tmp_path_factory.mktemp("groundtruth"))
    manifest = generate(os.path.join(folder, "data"), n_images=TRAIN_IMAGES, size=RESOLUTION, n_classes=N_CLASSES,
                        seed=0)
    weights = os.path.join(folder, "resnet18.pt")
    result = train(manifest, weights, epochs=TRAIN_EPOCHS, batch_size=16, resolution=RESOLUTION, seed=0)
    return manifest, weights, result


@pytest.mark.slow  # trains a classifier
def test_training_beats_chance_on_held_out_images(trained):
    manifest, weights, result = trained
    assert (result["n_train"], result["n_test"], result["num_classes"]) == (384, 96, N_CLASSES)
    assert result["epochs"] == TRAIN_EPOCHS and len(result["history"]) == TRAIN_EPOCHS
    assert result["test_accuracy"] >= 0.85  # chance: 0.5
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]


@pytest.mark.slow  # trains a classifier
def test_training_is_seeded(one_thread, tmp_path):
    manifest = generate(str(tmp_path / "tiny"), n_images=40, size=RESOLUTION, n_classes=2, seed=1)
    states = []
    for name in ("a.pt", "b.pt", "other-seed.pt"):
        train(manifest, str(tmp_path / name), epochs=1, batch_size=16, resolution=RESOLUTION,
              seed=6 if name.startswith("other") else 5)
        states.append(torch.load(tmp_path / name, weights_only=True))
    same, other = states[1], states[2]
    assert states[0].keys() == same.keys()
    assert all(torch.equal(states[0][key], same[key]) for key in same)
    assert not torch.equal(states[0]["fc.weight"], other["fc.weight"])


def test_training_needs_a_split_and_sane_settings(trained, tmp_path):
    manifest, _, _ = trained
    test_csv = os.path.join(os.path.dirname(manifest), "test.csv")  # path,label,mask_path: no split column
    with pytest.raises(DataError, match="no 'split' column"):
        train(test_csv, str(tmp_path / "w.pt"), epochs=1, resolution=RESOLUTION)
    with pytest.raises(ConfigError, match="epochs"):
        train(manifest, str(tmp_path / "w.pt"), epochs=0, resolution=RESOLUTION)
    assert not os.path.exists(tmp_path / "w.pt")


@pytest.mark.slow  # trains a classifier
def test_weights_load_as_a_job_model_and_agree_with_training(trained):
    manifest, weights, result = trained
    folder = os.path.dirname(manifest)
    classifier = build_classifier("resnet18", weights, RESOLUTION, seed=0,
                                  categories=read_categories(os.path.join(folder, "categories.txt")))
    assert classifier.num_classes == N_CLASSES and classifier.category(0) == "red circle"
    records = list_images(os.path.join(folder, "test.csv"))
    inputs = classifier.preprocessing.normalize(torch.stack([load_image(r.path, classifier.preprocessing)
                                                             for r in records]))
    with torch.no_grad():
        predicted = classifier.net(inputs).argmax(dim=1)
    correct = int((predicted == torch.tensor([r.label for r in records])).sum())
    assert correct / len(records) == result["test_accuracy"]


@pytest.mark.slow  # trains a classifier
def test_occlusion_of_the_trained_model_beats_a_random_map(trained):
    manifest, weights, _ = trained
    classifier = build_classifier("resnet18", weights, RESOLUTION, seed=0)
    records = list_images(os.path.join(os.path.dirname(manifest), "test.csv"))[:32]
    inputs = classifier.preprocessing.normalize(torch.stack([load_image(r.path, classifier.preprocessing)
                                                             for r in records]))
    masks = torch.stack([load_mask(r.mask_path, classifier.preprocessing) for r in records])
    targets = torch.tensor([r.label for r in records])
    occlusion = build_method("occlusion", classifier, OcclusionSettings(window=8, stride=4), forward_batch=256)
    maps = occlusion.attribute(inputs, targets, seeds=[0] * len(records))
    random_maps = torch.randn(maps.shape, generator=torch.Generator().manual_seed(0))

    occlusion_scores = {k: float(v.mean()) for k, v in localisation_metrics(maps, masks).items()}
    random_scores = {k: float(v.mean()) for k, v in localisation_metrics(random_maps, masks).items()}
    mask_scores = {k: float(v.mean()) for k, v in
                   localisation_metrics(masks[:, None].float().expand(-1, 3, -1, -1), masks).items()}
    chance = float((masks.sum(dim=(1, 2)) / masks[0].numel()).mean())
    assert mask_scores == {"pointing_game": 1.0, "relevance_mass": 1.0, "relevance_rank": 1.0}
    assert chance < 0.1 and random_scores["pointing_game"] < 0.2
    # Measured: occlusion 0.57 / 0.26 / 0.46 against random 0.06 / 0.07 / 0.07 (pointing, mass, rank).
    assert occlusion_scores["pointing_game"] >= 0.4
    for name in LOCALISATION_COLUMNS:
        assert occlusion_scores[name] > 2 * random_scores[name] and occlusion_scores[name] > random_scores[name] + 0.1
