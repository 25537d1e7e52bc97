"""Occlusion's path by measurement: the probe runs the faster path, says why, warns when incremental is forced where
it is slower, and the maps do not depend on the path.

The clock is instrumented, never read for real: it advances by a set cost per full forward (a hook on the network)
and per incremental chunk, so which path "is faster" is the test's decision, not the machine's load.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from net_helpers import give_biases
from test_incremental_occlusion import images, wrap
from xcv_batch.execution.explain import BatchExplainer
from xcv_batch.methods import build_method
from xcv_batch.methods import incremental, occlusion_path
from xcv_batch.methods.settings import IntegratedGradientsSettings, OcclusionSettings
from xcv_batch.output.store import rows_to_table

SIZE = 24
SETTINGS = dict(window=4, stride=4)  # a 6 × 6 grid: the FLOPs leave the choice open (ratio < 1)


def small_cnn() -> nn.Sequential:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5)).double().eval()
    give_biases(net, 1)
    return net


class InstrumentedClock:
    """Seconds that pass only as work is done: ``full`` per full-forward copy, ``incremental`` per incremental copy."""

    def __init__(self, net: nn.Module, monkeypatch, full: float, incremental_cost: float):
        self.now = 0.0
        self.reads = 0
        net.register_forward_hook(lambda module, args, out: self.advance(full * args[0].shape[0]))
        original = incremental.IncrementalRunner.occluded_logits

        def occluded_logits(runner, chunk, layouts):
            self.advance(incremental_cost * chunk.image.shape[0])
            return original(runner, chunk, layouts)

        monkeypatch.setattr(incremental.IncrementalRunner, "occluded_logits", occluded_logits)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        self.reads += 1
        return self.now


@pytest.fixture(autouse=True)
def fresh_probes():
    occlusion_path.forget_choices()
    yield
    occlusion_path.forget_choices()


def occlusion(net, incremental_mode, forward_batch: int = 16):
    return build_method("occlusion", wrap(net, SIZE), OcclusionSettings(**SETTINGS, incremental=incremental_mode),
                        forward_batch)


@pytest.mark.parametrize("full_cost, incremental_cost, expected", [(1.0, 0.2, "incremental"), (1.0, 3.0, "full")])
def test_auto_runs_the_path_the_probe_measures_faster(monkeypatch, caplog, full_cost, incremental_cost, expected):
    net = small_cnn()
    method = occlusion(net, "auto")
    assert method.plan((3, SIZE, SIZE)).flop_ratio < 1.0
    method.clock = InstrumentedClock(net, monkeypatch, full_cost, incremental_cost)
    with caplog.at_level(logging.INFO, logger="xcv_batch.methods.occlusion_path"):
        method.attribute(images(2, SIZE), torch.tensor([0, 3]), [0, 1])
        method.attribute(images(2, SIZE, seed=1), torch.tensor([1, 2]), [0, 1])
    assert method.last_path == expected and method.row_columns() == {"occlusion_path": expected}
    timings = method.last_choice.timings
    # 36 windows + the clean copy per image; the incremental clean pass costs nothing on this clock
    assert timings.full_s == pytest.approx(37 * full_cost)
    assert timings.incremental_s == pytest.approx(36 * incremental_cost)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines  # once per process and setting, not per call
    assert lines[0].startswith(f"occlusion: {expected} path (measured incremental ")
    assert f"full {37 * full_cost:.3g} s/image" in lines[0]
    assert caplog.records[0].levelno == logging.INFO


def test_the_probe_runs_once_per_setting_and_again_for_another_batch(monkeypatch):
    net = small_cnn()
    clock = InstrumentedClock(net, monkeypatch, 1.0, 0.2)
    first = occlusion(net, "auto", forward_batch=64)  # 36 windows: one forward batch spans 2 images
    first.clock = clock
    first.attribute(images(2, SIZE), torch.tensor([0, 3]), [0, 1])
    reads = clock.reads
    assert reads > 0
    second = occlusion(net, "auto", forward_batch=64)  # another method object, same network and setting: cached
    second.clock = clock
    second.attribute(images(3, SIZE), torch.tensor([0, 3, 1]), [0, 1, 2])  # 3 images run as chunks of 2's
    assert clock.reads == reads and second.last_path == "incremental"
    second.attribute(images(1, SIZE), torch.tensor([0]), [0])  # a batch of 1 fills chunks otherwise: probed again
    assert clock.reads > reads


def test_forcing_incremental_where_it_is_slower_warns_once(monkeypatch, caplog):
    net = small_cnn()
    method = occlusion(net, True)
    method.clock = InstrumentedClock(net, monkeypatch, 1.0, 3.0)
    with caplog.at_level(logging.INFO, logger="xcv_batch.methods.occlusion_path"):
        for _ in range(3):
            method.attribute(images(2, SIZE), torch.tensor([0, 3]), [0, 1])
    assert method.last_path == "incremental"  # forced: never overruled
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and len(caplog.records) == 1
    message = warnings[0].getMessage()
    assert "incremental path forced (incremental: true) but slower here" in message
    assert "incremental 108 s/image, full 37 s/image" in message


def test_forcing_incremental_where_it_is_faster_says_nothing(monkeypatch, caplog):
    net = small_cnn()
    method = occlusion(net, True)
    method.clock = InstrumentedClock(net, monkeypatch, 1.0, 0.2)
    with caplog.at_level(logging.INFO, logger="xcv_batch.methods.occlusion_path"):
        method.attribute(images(2, SIZE), torch.tensor([0, 3]), [0, 1])
    assert method.last_path == "incremental" and caplog.records == []


@pytest.mark.parametrize("window, stride, mode, path, level, why", [
    # a window over the whole image changes every activation: a full forward's FLOPs per copy, nothing to save
    (12, 1, "auto", "full", logging.INFO, "needs 1.00× a full forward's FLOPs per copy"),
    (12, 1, True, "incremental", logging.WARNING, "needs 1.00× a full forward's FLOPs per copy"),
    # 10 × 10 windows on 12 px: 0.96 of the FLOPs, too little for auto to probe
    (10, 2, "auto", "full", logging.INFO, "needs 0.96 of a full forward's FLOPs per copy, not below 0.7"),
])
def test_where_the_flops_rule_incremental_out_there_is_no_probe(monkeypatch, caplog, window, stride, mode, path,
                                                                 level, why):
    net = small_cnn()
    clock = InstrumentedClock(net, monkeypatch, 1.0, 0.0001)
    method = build_method("occlusion", wrap(net, 12), OcclusionSettings(window=window, stride=stride,
                                                                        incremental=mode), 16)
    method.clock = clock
    with caplog.at_level(logging.INFO, logger="xcv_batch.methods.occlusion_path"):
        method.attribute(images(1, 12), torch.tensor([2]), [0])
    assert method.last_path == path and clock.reads == 0
    assert [r.levelno for r in caplog.records] == [level]
    assert why in caplog.records[0].getMessage()


def test_the_maps_are_the_same_whichever_path_the_probe_picks(monkeypatch):
    inputs, targets = images(3, SIZE, seed=4), torch.tensor([0, 2, 4])
    maps = {}
    for full_cost, incremental_cost in ((1.0, 0.2), (1.0, 3.0)):
        occlusion_path.forget_choices()
        net = small_cnn()
        method = occlusion(net, "auto", forward_batch=7)
        method.clock = InstrumentedClock(net, monkeypatch, full_cost, incremental_cost)
        result = method.attribute(inputs, targets, [0, 1, 2])
        maps[method.last_path] = result
        monkeypatch.undo()
    assert set(maps) == {"incremental", "full"}
    scale = maps["full"].abs().max()
    assert (maps["incremental"] - maps["full"]).abs().max() <= 1e-9 * scale


def test_the_rows_record_the_path_and_parquet_stores_it(monkeypatch):
    net = small_cnn()
    model = wrap(net, SIZE)
    explainer = BatchExplainer(model, {"occlusion": OcclusionSettings(**SETTINGS),
                                       "integrated_gradients": IntegratedGradientsSettings(n_steps=2)},
                               compute=None)
    explainer.methods["occlusion"].clock = InstrumentedClock(explainer.executed.net, monkeypatch, 1.0, 0.2)
    inputs = images(2, SIZE).float()
    explainer.executed.net.float()
    result = explainer.explain_batch(inputs, ["a", "b"])
    shared = [{"image_id": i, "image_path": i, "index": n, "label": None} for n, i in enumerate("ab")]
    table = rows_to_table(result.rows(shared))
    paths = dict(zip(zip(table.column("image_id").to_pylist(), table.column("method").to_pylist()),
                     table.column("occlusion_path").to_pylist()))
    assert paths == {("a", "occlusion"): "incremental", ("b", "occlusion"): "incremental",
                     ("a", "integrated_gradients"): None, ("b", "integrated_gradients"): None}
    assert str(table.schema.field("occlusion_path").type) == "string"
