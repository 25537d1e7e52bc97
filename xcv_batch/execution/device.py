"""Running the methods close to the device's limits: precision, forward-batch sizing, out-of-memory retry, feeding.

Small tools a worker wires in with a few lines. None imports Ray and none changes what a method is; the fast copy
changes maps by float rounding (relative 1e-6), bf16/fp16 by more (the benchmark reports how much):

- :func:`attribution_classifier`: the model with BatchNorm folded into its convolutions and channels_last weights,
  the same function computed faster, for the methods to run on;
- :func:`autocast`: fp32 by default; ``bf16``/``fp16`` opt in to autocast (results change slightly: the benchmark
  reports by how much);
- :func:`probe_forward_batch` / :func:`size_forward_batches`: how many perturbed copies fit in one forward (and
  backward) pass, from the device's free memory and the measured cost of two small trial passes;
- :class:`HalveOnOutOfMemory`: a method that still runs out of memory is retried with half its forward batch, and
  keeps the smaller size for its later calls;
- :func:`prefetch` + :class:`DeviceFeeder`: the next batch is stacked, pinned and copied on a side CUDA stream while
  the device works on the current one.

Memory is read through a :class:`DeviceMemory`, so tests on a CPU drive the probe with a fake budget.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import queue
import resource
import threading
from typing import Callable, ContextManager, Iterable, Iterator, Protocol, Sequence, TypeVar

import torch

from ..cores import usable_cores

log = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")

# --------------------------------------------------------------------------------------------------- precision

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}



def autocast(device: torch.device | str, precision: str = "fp32") -> ContextManager:
    """The context the methods run in: nothing for fp32, else ``torch.autocast`` to bf16/fp16.

    Inputs, attributions and every sum the methods make stay float32 (autocast only lowers the model's matmuls and
    convolutions). fp16 has no loss scaling here, so small gradients (IG at 200 steps) can underflow: prefer bf16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# --------------------------------------------------------------------------------------------------- execution


def attribution_classifier(classifier, channels_last: bool = True, fold_batchnorm: bool = True):
    """A copy of ``classifier`` whose network computes the same function faster, for the methods to run on.

    See :func:`optimised_net`. The original classifier is untouched: its state_dict still loads into the stock
    architecture (the Captum references of the tests do that). Module names are kept, so Guided Grad-CAM's layer
    has the same name on the copy (the method swaps the ReLUs of the network it is built on: here, the copy's).
    """
    size = classifier.preprocessing.crop_size
    example = torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(0)).to(classifier.device)
    net = optimised_net(classifier.net, example, channels_last, fold_batchnorm)
    return dataclasses.replace(classifier, net=net)


def compiled_classifier(classifier):
    """``classifier`` with its network wrapped by ``torch.compile`` (the same module underneath: its parameters and
    modules are shared, so a method that swaps modules on one sees them on the other). Compilation happens at the
    first call of each kind of pass (forward; forward+backward)."""
    return dataclasses.replace(classifier, net=torch.compile(classifier.net))


def optimised_net(net: torch.nn.Module, example: torch.Tensor, channels_last: bool = True,
                  fold_batchnorm: bool = True) -> torch.nn.Module:
    """A copy of an eval-mode ``net`` that computes the same function with less memory traffic.

    - BatchNorm folded into the convolution before it: in eval mode BN is a per-channel affine map, so
      ``bn(conv(x))`` is one convolution with scaled weights and a bias, and a pass over every activation disappears
      (two with a backward). Only pairs whose wiring is known are folded: consecutive children of an
      ``nn.Sequential`` and torchvision ResNet blocks' ``convN``/``bnN`` (and the stem's); the copy's output on
      ``example`` is checked against the original's, and the unfolded copy kept if they differ beyond rounding.
    - weights in channels_last: oneDNN (CPU) and cuDNN (GPU) convolutions run faster in NHWC, and an NCHW input is
      converted once, in the first convolution.

    Measured on the 2-core EPYC of docs/performance.md (one thread, ResNet-18, 64 and 224 px):
    +10–17 % from channels_last alone, +15–20 % with the folding, forward and forward+backward alike. Results differ
    from the original network's by float rounding (relative 1e-6 on attributions).
    """
    fast = copy.deepcopy(net)
    folded = _fold_batchnorm(fast) if fold_batchnorm else 0
    if folded:
        difference = _difference(net, fast, example)
        if difference is not None:
            log.warning("folding BatchNorm changed %s's outputs beyond rounding (largest difference %.3g of the "
                        "largest output on %s); running it unfolded", type(net).__name__, difference, example.device)
            fast, folded = copy.deepcopy(net), 0
    if fold_batchnorm:
        # Never a silent fallback: a network that keeps BatchNorm layers runs slower than the fast copy promises.
        left = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fast.modules())
        if left:
            log.info("fast execution: %d BatchNorm layers of %s folded, %d left as they are (their wiring is not "
                     "known to follow a convolution)", folded, type(net).__name__, left)
    if channels_last:
        fast.to(memory_format=torch.channels_last)
    return fast


def _fold_batchnorm(net: torch.nn.Module) -> int:
    """Folds eval-mode BatchNorm2d into the Conv2d before it, in place; returns how many."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    def pairs(module: torch.nn.Module) -> list[tuple[str, str]]:
        if isinstance(module, torch.nn.Sequential):
            names = list(module._modules)
            return [(a, b) for a, b in zip(names, names[1:])]
        if isinstance(module, (BasicBlock, Bottleneck, ResNet)):  # forward applies bnN right after convN
            return [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
        return []

    count = 0
    for module in list(net.modules()):
        for conv_name, bn_name in pairs(module):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                    and not bn.training and bn.track_running_stats):
                fused = fuse_conv_bn_eval(conv, bn)
                fused.requires_grad_(False)
                setattr(module, conv_name, fused)
                setattr(module, bn_name, torch.nn.Identity())
                count += 1
    return count


def _difference(net: torch.nn.Module, other: torch.nn.Module, example: torch.Tensor) -> float | None:
    """None when ``other`` computes ``net``'s function up to rounding on ``example``; else their largest difference
    relative to the largest output."""
    # CUDA runs convolutions in TF32 by default, which rounds every product to 10 mantissa bits: two equal functions
    # then differ far beyond float32 rounding, and a correct fold would be thrown away. Compare in full float32.
    cudnn = torch.backends.cudnn
    with torch.no_grad(), cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                                      deterministic=cudnn.deterministic, allow_tf32=False):
        expected, got = net(example).double(), other(example).double()
    scale = expected.abs().max().item()
    if torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
        return None
    return (got - expected).abs().max().item() / max(scale, 1e-30)


# ---------------------------------------------------------------------------------------- memory and batch size


class DeviceMemory(Protocol):
    """Where free memory and the cost of a trial pass come from (CUDA's allocator, or a fake in tests)."""

    def free_bytes(self) -> int:
        """Bytes a new allocation can still get."""

    def peak_bytes(self, run: Callable[[], None]) -> int:
        """Runs ``run`` and returns the most bytes it held at once beyond what was allocated before."""


class CudaMemory:
    """:class:`DeviceMemory` of one CUDA device, read from PyTorch's caching allocator."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def free_bytes(self) -> int:
        free, _total = torch.cuda.mem_get_info(self.device)
        # Blocks the caching allocator holds but no tensor uses are free for us too.
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + cached)

    def peak_bytes(self, run: Callable[[], None]) -> int:
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        run()
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device) - before)


def device_memory(device: torch.device | str) -> DeviceMemory | None:
    """The device's memory reader; None on a CPU, whose batch size stays the configured one (RAM is not the limit
    there, cache and cores are)."""
    device = torch.device(device)
    return CudaMemory(device) if device.type == "cuda" else None


@dataclasses.dataclass(frozen=True)
class BatchProbe:
    """What a probe measured and chose."""

    bytes_per_row: int
    fixed_bytes: int
    free_bytes: int
    forward_batch: int


def probe_forward_batch(
    trial: Callable[[int], None],
    memory: DeviceMemory,
    probe_rows: tuple[int, int] = (4, 16),
    headroom: float = 0.8,
    cap: int = 1024,
) -> BatchProbe:
    """The largest forward batch that fits ``headroom`` of the free memory, from two trial passes.

    ``trial(rows)`` runs one pass of ``rows`` copies as the method would. Its peak memory is taken as
    ``fixed + rows · per_row`` (activations grow linearly with the batch; workspaces and weights do not) and solved
    from the two trials. The result is capped (beyond a few hundred rows nothing gets faster, and a method also
    keeps per-image buffers outside the forward pass) and rounded down to a multiple of 8 (tensor-core tiles).
    """
    small, large = probe_rows
    if not 0 < small < large:
        raise ValueError(f"probe_rows must be two increasing positive sizes, got {probe_rows}")
    peak_small = memory.peak_bytes(lambda: trial(small))
    peak_large = memory.peak_bytes(lambda: trial(large))
    per_row = max(1, math.ceil((peak_large - peak_small) / (large - small)))
    fixed = max(0, peak_small - small * per_row)
    free = memory.free_bytes()
    rows = int((free * headroom - fixed) // per_row)
    rows = max(1, min(cap, rows))
    if rows >= 8:
        rows -= rows % 8
    return BatchProbe(bytes_per_row=per_row, fixed_bytes=fixed, free_bytes=free, forward_batch=rows)


def model_trial(
    net: torch.nn.Module, image_shape: Sequence[int], device, gradient: bool, precision: str = "fp32"
) -> Callable[[int], None]:
    """``trial(rows)`` for :func:`probe_forward_batch`: a pass of ``rows`` images through ``net`` like a method's
    (forward only, or forward and backward to the input)."""
    channels_last = torch.device(device).type == "cuda"

    def trial(rows: int) -> None:
        images = torch.zeros((rows, *image_shape), device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            if gradient:
                images.requires_grad_(True)
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(net(images)[:, 0].sum(), images)
                del grad
            else:
                with torch.inference_mode():
                    net(images)

    return trial


def size_forward_batches(
    methods: dict, classifier, image_shape: Sequence[int], precision: str = "fp32",
    memory: DeviceMemory | None = None, cap: int = 1024, headroom: float = 0.8,
) -> dict[str, BatchProbe]:
    """Sets each method's ``forward_batch`` from a probe of its kind of pass (gradient or forward only).

    ``memory`` defaults to the classifier's device's; on a CPU nothing is probed and the methods keep their size.
    Two probes in all, not one per method: methods of one kind cost the same per row.
    """
    memory = memory if memory is not None else device_memory(classifier.device)
    if memory is None:
        return {}
    probes: dict[bool, BatchProbe] = {}
    chosen: dict[str, BatchProbe] = {}
    for name, method in methods.items():
        if getattr(method, "control", False):  # no pass through the model to size
            continue
        gradient = method.differentiates
        if gradient not in probes:
            trial = model_trial(classifier.net, image_shape, classifier.device, gradient, precision)
            probes[gradient] = probe_forward_batch(trial, memory, headroom=headroom, cap=cap)
        method.forward_batch = probes[gradient].forward_batch
        chosen[name] = probes[gradient]
    return chosen


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclasses.dataclass
class HalveOnOutOfMemory:
    """Runs a method's (or a metric's) call; on out-of-memory halves its ``forward_batch`` and tries again.

    The halved size stays on the object (so its next calls, and a method's Max-Sensitivity calls, start there) and is
    noted in ``remembered`` under its name. Neither methods' nor metrics' results depend on ``forward_batch``, so a
    retry changes nothing but memory.
    """

    min_batch: int = 1
    remembered: dict[str, int] = dataclasses.field(default_factory=dict)

    def run(self, method, call: Callable[[], T]) -> T:
        while True:
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(error) or method.forward_batch <= self.min_batch:
                    raise
            # Outside the except block: the exception, and the tensors its traceback's frames held, are gone.
            smaller = max(self.min_batch, method.forward_batch // 2)
            log.warning("%s ran out of memory at forward_batch=%d; retrying with %d",
                        method.name, method.forward_batch, smaller)
            method.forward_batch = smaller
            self.remembered[method.name] = smaller
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def peak_host_bytes() -> int:
    """This process's peak resident memory (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------------- feeding


class InFlight:
    """A tensor on its way to the device; :meth:`wait` on the thread that will use it."""

    def __init__(self, tensor: torch.Tensor, event: "torch.cuda.Event | None" = None):
        self._tensor, self._event = tensor, event

    def wait(self) -> torch.Tensor:
        if self._event is not None:
            stream = torch.cuda.current_stream(self._tensor.device)
            stream.wait_event(self._event)
            # The copy was made on the feeder's stream; tell the allocator this stream uses it now.
            self._tensor.record_stream(stream)
        return self._tensor


class DeviceFeeder:
    """Copies CPU batches to the device without stalling it: pinned host memory, a side CUDA stream, an event.

    :meth:`send` may run on a prefetch thread; on a CPU it only fixes the memory format.
    """

    def __init__(self, device: torch.device | str, channels_last: bool | None = None):
        self.device = torch.device(device)
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def send(self, cpu_tensor: torch.Tensor) -> InFlight:
        four_d = self.channels_last and cpu_tensor.dim() == 4
        memory_format = torch.channels_last if four_d else torch.contiguous_format
        if self._stream is None:
            return InFlight(cpu_tensor.to(self.device).contiguous(memory_format=memory_format))
        pinned = cpu_tensor.pin_memory()
        with torch.cuda.stream(self._stream):
            on_device = pinned.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
            event = torch.cuda.Event()
            event.record(self._stream)
        return InFlight(on_device, event)


_END = object()


def prefetch(items: Iterable[T], stage: Callable[[T], U], depth: int = 1) -> Iterator[U]:
    """``stage(item)`` for each item, in order, computed up to ``depth`` items ahead on a background thread.

    Memory stays bounded (at most ``depth`` staged items wait); an exception in ``items`` or ``stage`` comes out of
    this iterator at the item where it happened; closing the iterator early stops the thread.
    """
    if depth < 1:
        raise ValueError(f"depth must be ≥ 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, stage(item))):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put((False, error))
            return
        put((True, _END))

    thread = threading.Thread(target=produce, name="xcv-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = ready.get()
            if not ok:
                raise value
            if value is _END:
                return
            yield value
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------------------------------ description


def describe_device(device: torch.device | str) -> str:
    """A line naming the hardware: the GPU's name and memory, or the CPU model and usable cores."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {usable_cores()} cores, torch {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings include it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
