"""Train a torchvision classifier on a labelled manifest, on the CPU, and save a state_dict for ``model.weights``.

Made for :mod:`xcv_batch.groundtruth.synth` datasets (a few thousand 64 px images, a few minutes on two cores), so
that a job can explain a model that really has learnt something when no pretrained weights can be downloaded.

The inputs are exactly what an xcv_batch run feeds the model: :func:`xcv_batch.data.images.load_image` with the
preprocessing of :func:`xcv_batch.models.classifier.describe_weights` for ``(arch, "none", resolution)`` — the same
resize, centre crop, mean and std that a run with ``model.weights: <this file>`` uses — then ``normalize``. Training is
seeded (initialisation, batch order, augmentation); AdamW with a one-cycle learning-rate schedule, and random
horizontal flips as the only augmentation (every class shape is mirror-symmetric, and the object's place is
already random).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Callable, Iterator, Sequence

import torch
import torchvision
from torch import nn

from ..data.sources import ImageRecord, list_images
from ..data.images import decode_many
from ..errors import ConfigError, DataError, ImageError
from ..models.classifier import Preprocessing, describe_weights


def train(
    manifest: str,
    out_path: str,
    arch: str = "resnet18",
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    resolution: int = 64,
    threads: int | None = None,
    weight_decay: float = 5e-4,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train ``arch`` from scratch on the ``train`` rows of ``manifest``, test on its ``test`` rows, save weights.

    ``manifest``: a CSV/Parquet manifest with ``path``, ``label`` and ``split`` (``train``/``test``) columns, such
    as the ``manifest.csv`` of :func:`xcv_batch.groundtruth.synth.generate`, or the folder holding it. ``out_path``:
    where the state_dict goes (written to a temporary name and renamed). ``threads``: torch's CPU threads while training
    (default: leave torch's setting). ``log``: called with one line per epoch.

    Returns ``{"test_accuracy", "train_accuracy", "epochs", "seconds", "n_train", "n_test", "num_classes",
    "weights", "history"}``; ``history`` has each epoch's mean loss and training accuracy.
    """
    if os.path.isdir(manifest):
        manifest = os.path.join(manifest, "manifest.csv")
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("resolution", resolution)):
        if value < 1:
            raise ConfigError(key, f"must be ≥ 1, got {value}")
    if lr <= 0:
        raise ConfigError("lr", f"must be > 0, got {lr}")
    started = time.perf_counter()
    with _torch_threads(threads):
        preprocessing, _ = describe_weights(arch, "none", resolution)
        train_records, test_records = split_records(manifest)
        num_classes = 1 + max(record.label for record in (*train_records, *test_records))
        train_x, train_y = load_split(train_records, preprocessing)
        test_x, test_y = load_split(test_records, preprocessing)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        net = net.to(memory_format=torch.channels_last)  # measured faster for these small inputs on CPU
        generator = torch.Generator().manual_seed(seed)
        steps_per_epoch = math.ceil(len(train_y) / batch_size)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
        )
        history = []
        for epoch in range(epochs):
            loss, accuracy = _train_epoch(net, optimizer, schedule, train_x, train_y, batch_size, generator)
            history.append({"epoch": epoch + 1, "loss": loss, "train_accuracy": accuracy})
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs}: loss {loss:.3f}, train accuracy {accuracy:.3f} "
                    f"({time.perf_counter() - started:.0f} s)")

        net.eval()
        test_accuracy = evaluate(net, test_x, test_y)
        train_accuracy = evaluate(net, train_x, train_y)
        _save_state_dict(net, out_path)
    return {
        "test_accuracy": test_accuracy,
        "train_accuracy": train_accuracy,
        "epochs": epochs,
        "seconds": time.perf_counter() - started,
        "n_train": len(train_y),
        "n_test": len(test_y),
        "num_classes": num_classes,
        "weights": os.path.abspath(out_path),
        "history": history,
    }


def split_records(manifest: str) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, test) records of a manifest with a ``split`` column; every record must have a label."""
    records = list_images(manifest)
    splits = _read_splits(manifest)
    train_records, test_records = [], []
    for record in records:
        if record.label is None:
            raise DataError(f"train: {record.image_id} has no label in {manifest}; training needs every label")
        split = splits.get(os.path.normpath(record.path))
        if split == "train":
            train_records.append(record)
        elif split == "test":
            test_records.append(record)
        else:
            raise DataError(f"train: {record.image_id} has split {split!r} in {manifest}; use 'train' or 'test'")
    if not train_records or not test_records:
        raise DataError(f"train: {manifest} needs rows of both splits, has {len(train_records)} train and "
                        f"{len(test_records)} test")
    return train_records, test_records


def _read_splits(manifest: str) -> dict[str, str]:
    """Resolved local image path → its ``split`` cell (manifest paths are relative to the manifest's folder)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    extension = os.path.splitext(manifest)[1].lower()
    if extension == ".csv":
        options = pa_csv.ConvertOptions(column_types={"path": pa.string(), "split": pa.string()})
        table = pa_csv.read_csv(manifest, convert_options=options)
    elif extension == ".parquet":
        table = pq.read_table(manifest)
    else:
        raise DataError(f"train: {manifest} must be a .csv or .parquet manifest with a 'split' column")
    if "split" not in table.column_names:
        raise DataError(f"train: {manifest} has no 'split' column (train/test); synth's manifest.csv has one")
    folder = os.path.dirname(os.path.abspath(manifest))
    paths = table.column("path").to_pylist()
    splits = table.column("split").to_pylist()
    return {
        os.path.normpath(os.path.join(folder, os.path.expanduser(str(path).strip()))): (split or "").strip()
        for path, split in zip(paths, splits)
    }


def load_split(records: Sequence[ImageRecord], preprocessing: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised model inputs (N, 3, R, R), channels-last, and labels (N,), as an xcv_batch run would feed them."""
    pixels = []
    for record, result in decode_many(records, preprocessing):
        if isinstance(result, ImageError):
            raise DataError(f"train: cannot use {record.image_id}: {result}")
        pixels.append(result)
    inputs = preprocessing.normalize(torch.stack(pixels))
    labels = torch.tensor([record.label for record in records], dtype=torch.long)
    return inputs.contiguous(memory_format=torch.channels_last), labels


def _train_epoch(net, optimizer, schedule, inputs, labels, batch_size, generator) -> tuple[float, float]:
    net.train()
    total_loss, correct = 0.0, 0
    for batch in _batches(len(labels), batch_size, generator):
        x = _flip_some(inputs[batch], generator)
        y = labels[batch]
        logits = net(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total_loss += float(loss.detach()) * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
    return total_loss / len(labels), correct / len(labels)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    # Drop a last batch of one: BatchNorm cannot train on a single image.
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        if len(batch) > 1:
            yield batch


def _flip_some(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


@torch.no_grad()
def evaluate(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``net`` (already in eval mode) on normalised inputs."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = net(inputs[start:start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start:start + batch_size]).sum())
    return correct / len(labels)


def _save_state_dict(net: nn.Module, out_path: str) -> None:
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    # Plain contiguous tensors: the file should not depend on the memory format used while training.
    state = {name: tensor.detach().contiguous().clone() for name, tensor in net.state_dict().items()}
    temporary = f"{out_path}.tmp-{os.getpid()}"
    torch.save(state, temporary)
    os.replace(temporary, out_path)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
