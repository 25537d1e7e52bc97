"""What every registered metric owes, run over the registry (a metric registered later is tested for free):

* its values do not depend on ``forward_batch`` nor on which images share a batch;
* its direction is right on a case with a known answer: on a linear model whose logit reads one square region R of
  the image, Integrated Gradients (exact there: weight ⊙ input, nonzero on R only) must score better than a map of
  seeded noise that ignores the model, in every column the metric writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from xcv_batch.methods import MethodSpec, build_method, registered
from xcv_batch.methods.base import AttributionMethod
from xcv_batch.methods.registry import Passes
from xcv_batch.methods.settings import IntegratedGradientsSettings
from xcv_batch.metrics.base import MapBatch, MetricContext
from xcv_batch.metrics.registry import metric_specs
from xcv_batch.models.classifier import Classifier
from xcv_batch.models.preprocessing import Preprocessing

SIZE = 16
#: the region the model reads: rows and columns 4 … 11 (a quarter of the pixels)
REGION = (slice(4, 12), slice(4, 12))
N_IMAGES = 4
SEEDS = [11, 12, 13, 14]
IMAGE_IDS = [f"image-{i}" for i in range(N_IMAGES)]


@dataclass(frozen=True)
class NoiseSettings:
    pass


class SeededNoise(AttributionMethod):
    """A map of Gaussian noise drawn from the image's seed: it says nothing about the model (the wrong answer)."""

    def attribute(self, inputs, targets, seeds):
        maps = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(int(seed))
            maps.append(torch.randn(tuple(inputs.shape[1:]), generator=generator, dtype=torch.float64))
        return torch.stack(maps).to(inputs.device).float()


NOISE = MethodSpec(name="contract_noise", settings=NoiseSettings, label="Seeded noise", stochastic=True,
                   implementation=f"{__name__}:SeededNoise", passes=lambda s, height, width: Passes(forward=1))
GOOD = ("integrated_gradients", IntegratedGradientsSettings(n_steps=4))
BAD = ("contract_noise", NoiseSettings())


def region_classifier() -> Classifier:
    """Two classes: logit 0 = 8 × (the mean of R over the channels − 0.75), logit 1 = its negative; nothing else
    counts. The offset puts the class-0 probability of a blurred image mid-range, where insertion can tell maps
    apart (the bias does not enter Integrated Gradients)."""
    weight = torch.zeros(2, 3, SIZE, SIZE)
    weight[0][(slice(None), *REGION)] = 8.0 / (3 * 8 * 8)
    weight[1] = -weight[0]
    linear = nn.Linear(3 * SIZE * SIZE, 2)
    with torch.no_grad():
        linear.weight.copy_(weight.flatten(1))
        linear.bias.copy_(torch.tensor([-6.0, 6.0]))
    net = nn.Sequential(nn.Flatten(), linear).eval().requires_grad_(False)
    return Classifier(arch="region", net=net, device=torch.device("cpu"),
                      preprocessing=Preprocessing(SIZE, SIZE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                      num_classes=2, categories=None, weights="none")


def images() -> torch.Tensor:
    """R bright (1), the rest half as bright (0.5), with a little seeded noise so that no two pixels tie."""
    x = torch.full((N_IMAGES, 3, SIZE, SIZE), 0.5)
    x[(slice(None), slice(None), *REGION)] = 1.0
    return x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))


def masks() -> list[torch.Tensor]:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[REGION] = True
    return [mask.clone() for _ in range(N_IMAGES)]


def default_settings(spec):
    """The metric's settings when a job turns it on without naming any."""
    return spec.default if spec.default is not None else spec.settings()


def evaluate(spec, method: tuple[str, object], indices: list[int], forward_batch: int) -> dict[str, list]:
    """``spec``'s metric on the maps of ``method`` for the images ``indices``, as one batch: column → values."""
    name, settings = method
    classifier = region_classifier()
    built = build_method(name, classifier, settings, forward_batch)
    context = MetricContext(classifier=classifier, executed=classifier, methods={name: built},
                            method_settings={name: settings}, forward_batch=forward_batch, seed=5)
    metric = spec.build(default_settings(spec), context)
    inputs, targets = images()[indices], torch.zeros(len(indices), dtype=torch.int64)
    seeds = [SEEDS[i] for i in indices]
    attributions = built.attribute(inputs, targets, seeds)
    batch = MapBatch(name, built, inputs, targets, seeds, [IMAGE_IDS[i] for i in indices], attributions,
                     [masks()[i] for i in indices])
    evaluation = metric.evaluate(batch)
    assert evaluation is not None, f"{spec.name} evaluates nothing when every image has a mask"
    values = {}
    for column, column_values in evaluation.columns.items():
        if isinstance(column_values, torch.Tensor):
            column_values = column_values.detach().double().cpu().tolist()
        values[column] = [float(v) for v in column_values]
    return values


@pytest.fixture(scope="module", autouse=True)
def noise_method():
    with registered(NOISE):
        yield


@pytest.mark.parametrize("method", [GOOD, BAD], ids=["evidence", "noise"])
@pytest.mark.parametrize("name", [spec.name for spec in metric_specs()])
def test_values_do_not_depend_on_forward_batch_or_batch_mates(name, method):
    spec = next(spec for spec in metric_specs() if spec.name == name)
    together = evaluate(spec, method, list(range(N_IMAGES)), forward_batch=64)
    assert set(together) == {column.name for column in spec.columns}
    # one image alone, and two others with each other in reverse order; 3 copies a pass split each image's copies
    for indices in ([1], [3, 0]):
        apart = evaluate(spec, method, indices, forward_batch=3)
        for column, values in together.items():
            # abs: below 5e-9 is float32 rounding of the forwards (the evidence map's infidelity is ~1e-11, the noise
            # map's ~2e-6; an AVX-512 machine, whose convolutions round by batch size, moved the latter by 1.1e-9)
            assert apart[column] == pytest.approx([values[i] for i in indices], rel=1e-5, abs=5e-9), column


@pytest.mark.parametrize("name", [spec.name for spec in metric_specs()])
def test_the_true_evidence_scores_better_than_noise_in_every_column(name):
    spec = next(spec for spec in metric_specs() if spec.name == name)
    good = evaluate(spec, GOOD, list(range(N_IMAGES)), forward_batch=64)
    bad = evaluate(spec, BAD, list(range(N_IMAGES)), forward_batch=64)
    for column in spec.columns:
        mean_good = sum(good[column.name]) / N_IMAGES
        mean_bad = sum(bad[column.name]) / N_IMAGES
        better = mean_good < mean_bad if column.direction == "lower" else mean_good > mean_bad
        assert better, f"{column.name} ({column.direction} is better): evidence {mean_good:.4g}, noise {mean_bad:.4g}"
