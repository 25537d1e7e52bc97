"""The yardstick: the model alone in a plain loop, and raw passes paired into a measured call.

Efficiency divides the rows a measured call pushes through the model per second by the raw throughput of the same
model at the same batch and precision. On a machine shared with others the load changes by the second, so the raw
passes are interleaved into the measured call (:class:`PairedRaw`) rather than run before and after it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision

from xcv_batch.execution.device import autocast, synchronize


def plain_reference(classifier) -> torch.nn.Module:
    """The same weights in a stock torchvision model (nn.ReLU, Captum's hooks work): the seed's model and the
    yardstick of raw throughput."""
    net = torchvision.models.get_model(classifier.arch, weights=None)
    net.load_state_dict(classifier.net.state_dict())
    net.eval().to(classifier.device)
    for p in net.parameters():
        p.requires_grad_(False)
    if classifier.device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    return net


def timed(device: torch.device, run: Callable[[], object]) -> tuple[float, object]:
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - started, result


class RawThroughput:
    """The model alone in a plain loop at a given batch: one pass, forward or forward+backward to the input."""

    def __init__(self, net: torch.nn.Module, image_shape, device: torch.device, precision: str):
        self.net, self.image_shape, self.device, self.precision = net, tuple(image_shape), device, precision
        self._warm: set = set()

    def run_pass(self, kind: str, batch: int) -> None:
        x = torch.randn((batch, *self.image_shape), device=self.device)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        # Also inside a measured method's inference_mode / no_grad: the raw pass decides its own autograd state.
        with autocast(self.device, self.precision), torch.inference_mode(False):
            if kind == "forward":
                with torch.no_grad():
                    self.net(x)
            else:
                x.requires_grad_(True)
                with torch.enable_grad():
                    torch.autograd.grad(self.net(x)[:, 0].sum(), x)

    def warm(self, kind: str, batch: int) -> None:
        if (kind, batch) not in self._warm:  # allocator and oneDNN/cuDNN plans for this shape
            self.run_pass(kind, batch)
            self._warm.add((kind, batch))


class PairedRaw:
    """Raw passes interleaved into the measured code, so both see the same machine at the same moments.

    After a forward of the watched network, whenever raw passes have had less than ``share`` of the elapsed time,
    one raw pass (``kind``, ``batch``) runs and is timed on its own. The measured code's time is the wall time less
    the raw passes'. On a machine shared with others, brackets before and after a long call miss the load changes
    in between; this does not.
    """

    def __init__(self, raw: RawThroughput, kind: str, batch: int, share: float):
        self.raw, self.kind, self.batch, self.share = raw, kind, batch, share
        self.raw_seconds, self.raw_rows = 0.0, 0
        self._started = 0.0

    def _maybe_raw_pass(self, *_) -> None:
        if self.raw_seconds >= self.share * (time.perf_counter() - self._started):
            return
        synchronize(self.raw.device)  # queued work of the measured code belongs to it
        started = time.perf_counter()
        self.raw.run_pass(self.kind, self.batch)
        synchronize(self.raw.device)
        self.raw_seconds += time.perf_counter() - started
        self.raw_rows += self.batch

    def measure(self, watched: torch.nn.Module, run: Callable[[], object]) -> tuple[float, float]:
        """Runs ``run`` → (its own seconds, raw images per second meanwhile)."""
        self.raw.warm(self.kind, self.batch)
        self.raw_seconds, self.raw_rows = 0.0, 0
        handle = watched.register_forward_hook(self._maybe_raw_pass)
        try:
            synchronize(self.raw.device)
            self._started = time.perf_counter()
            run()
            synchronize(self.raw.device)
            wall = time.perf_counter() - self._started
        finally:
            handle.remove()
        if self.raw_rows == 0:  # a call without forwards of the watched net: measure right after it
            self._started = time.perf_counter() - 1.0
            self._maybe_raw_pass()
        return wall - self.raw_seconds, self.raw_rows / self.raw_seconds


@dataclass
class Piece:
    """One call to time: ``rows`` model passes of ``kind``, compared with raw passes at ``batch``."""

    run: Callable[[], object]
    rows: float
    batch: int


def summarise(kind: str, batch: int, rows: list[float], seconds: list[float], raw_rates: list[float]) -> dict:
    """A measurement's JSON entry from its pieces: efficiency per piece, median over pieces."""
    efficiencies = [r / s / rate for r, s, rate in zip(rows, seconds, raw_rates)]
    return {
        "kind": kind,
        "batch": batch,
        "rows": sum(rows),
        "seconds": sum(seconds),
        "piece_seconds": seconds,
        "efficiency": statistics.median(efficiencies),
        "piece_efficiencies": efficiencies,
        "raw_rate": statistics.median(raw_rates),
        "raw_rates": raw_rates,
    }


def measure_pieces(pieces: list[Piece], kind: str, raw: RawThroughput, watched: torch.nn.Module,
                   share: float) -> dict:
    """Each piece with raw passes paired into it; efficiency per piece, median over pieces."""
    seconds, raw_rates = [], []
    for piece in pieces:
        own, raw_rate = PairedRaw(raw, kind, piece.batch, share).measure(watched, piece.run)
        seconds.append(own)
        raw_rates.append(raw_rate)
    return summarise(kind, pieces[0].batch, [p.rows for p in pieces], seconds, raw_rates)


def execution_gain(stock: torch.nn.Module, fast: torch.nn.Module, image_shape, device, precision: str,
                   batch: int, rounds: int = 3) -> dict:
    """Raw throughput of the engine's execution of the model over the stock one, alternating passes."""
    out = {}
    for kind in ("forward", "forward_backward"):
        runners = {"stock": RawThroughput(stock, image_shape, device, precision),
                   "fast": RawThroughput(fast, image_shape, device, precision)}
        rates: dict[str, list[float]] = {"stock": [], "fast": []}
        for runner in runners.values():
            runner.warm(kind, batch)
        for _ in range(rounds):
            for label, runner in runners.items():
                elapsed, _ = timed(device, lambda: runner.run_pass(kind, batch))
                rates[label].append(batch / elapsed)
        out[kind] = {"stock": statistics.median(rates["stock"]), "fast": statistics.median(rates["fast"]),
                     "gain": statistics.median(f / s for f, s in zip(rates["fast"], rates["stock"]))}
    return out
