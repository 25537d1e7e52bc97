"""The GPU code paths, run on a CPU: autocast, the memory probe with a fake budget, halving on out-of-memory,
prefetching, the segmentation pool, and the batching that keeps forward passes full."""

from __future__ import annotations

import threading

import pytest
import torch

from fake_device import FakeMemory, RefusesBigBatches
from xcv_batch.methods import segmentation
from xcv_batch.execution.device import (
    DeviceFeeder,
    HalveOnOutOfMemory,
    attribution_classifier,
    autocast,
    is_out_of_memory,
    model_trial,
    prefetch,
    probe_forward_batch,
    size_forward_batches,
)
from xcv_batch.methods import build_method
from xcv_batch.methods.base import AttributionMethod, chunk_slices
from xcv_batch.methods.guided_gradcam import GuidedGradCam
from xcv_batch.methods.lime import Lime
from xcv_batch.methods.settings import (
    GuidedGradCamSettings,
    IGSmoothGradSettings,
    IntegratedGradientsSettings,
    LimeSettings,
    OcclusionSettings,
)
from xcv_batch.metrics.sensitivity import sensitivity_max
from xcv_batch.models.classifier import build_classifier

RESOLUTION = 32


@pytest.fixture(scope="module")
def classifier():
    return build_classifier("resnet18", "none", RESOLUTION, seed=0)


@pytest.fixture(scope="module")
def batch(classifier):
    g = torch.Generator().manual_seed(3)
    inputs = classifier.preprocessing.normalize(torch.rand((2, 3, RESOLUTION, RESOLUTION), generator=g))
    with torch.no_grad():
        targets = classifier.net(inputs).argmax(1)
    return inputs, targets


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


# ------------------------------------------------------------------------------------------------------ chunks


@pytest.mark.parametrize("total,size", [(520, 64), (130, 64), (64, 64), (65, 64), (7, 1), (1, 64), (0, 8)])
def test_chunks_are_balanced_cover_everything_and_respect_the_size(total, size):
    lengths = [part.stop - part.start for part in chunk_slices(total, size)]
    assert sum(lengths) == total
    assert len(lengths) == -(-total // size)  # as few chunks as the size allows
    if lengths:
        assert max(lengths) <= size and max(lengths) - min(lengths) <= 1
    starts = [part.start for part in chunk_slices(total, size)]
    assert starts == [sum(lengths[:i]) for i in range(len(lengths))]


# -------------------------------------------------------------------------------------------- fast execution


@pytest.fixture(scope="module")
def fast(classifier):
    return attribution_classifier(classifier)


def test_fast_copy_folds_every_batchnorm_and_leaves_the_original_alone(classifier, fast):
    def batchnorms(net):
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())

    assert batchnorms(classifier.net) == 20 and batchnorms(fast.net) == 0  # ResNet-18: 17 convN/bnN + 3 downsample
    assert fast.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert classifier.net.conv1.weight.is_contiguous()  # the original keeps its layout and its state_dict
    import torchvision

    torchvision.models.resnet18().load_state_dict(classifier.net.state_dict())
    assert [GuidedGradCam(c, GuidedGradCamSettings()).layer_name for c in (fast, classifier)] == ["layer4"] * 2


def test_guided_gradcam_on_the_fast_copy_switches_the_copys_relus(classifier, fast):
    method = GuidedGradCam(fast, GuidedGradCamSettings())
    switches = {id(m.switch) for m in fast.net.modules() if hasattr(m, "switch")}
    assert switches == {id(method.switch)}
    assert not switches & {id(m.switch) for m in classifier.net.modules() if hasattr(m, "switch")}


@pytest.mark.parametrize(
    "name,settings",
    [
        ("occlusion", OcclusionSettings(window=8, stride=8)),
        ("integrated_gradients", IntegratedGradientsSettings(n_steps=8)),
        ("ig_smoothgrad", IGSmoothGradSettings(nt_samples=2, n_steps=4)),
        ("guided_gradcam", GuidedGradCamSettings()),
    ],
)
def test_fast_copy_gives_the_same_maps_up_to_rounding(classifier, fast, batch, name, settings):
    inputs, targets = batch
    expected = build_method(name, classifier, settings, 16).attribute(inputs, targets, [3, 4])
    got = build_method(name, fast, settings, 16).attribute(inputs, targets, [3, 4])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    assert not torch.equal(got, expected)  # it really is another computation


def test_folding_is_refused_when_the_wiring_is_not_the_assumed_one(classifier, caplog):
    """A block named like a ResNet's whose bn1 does not follow conv1: the check catches it, nothing is folded, and
    both the refusal and the BatchNorm left unfolded are logged (never a silent fallback)."""
    import torchvision

    class Odd(torchvision.models.resnet.BasicBlock):
        def forward(self, x):  # bn1 applied before conv1
            return self.conv1(self.bn1(x))

    block = Odd(3, 3).eval()
    block.bn1.running_mean.fill_(0.5)
    block.bn1.running_var.fill_(2.0)
    from xcv_batch.execution.device import optimised_net

    example = torch.randn(2, 3, 8, 8)
    with caplog.at_level("INFO", logger="xcv_batch.execution.device"):
        copy_ = optimised_net(block, example)
    assert isinstance(copy_.bn1, torch.nn.BatchNorm2d)  # kept unfolded
    torch.testing.assert_close(copy_(example), block(example))
    warning, info = [r.getMessage() for r in caplog.records]
    assert warning.startswith("folding BatchNorm changed Odd's outputs beyond rounding (largest difference ")
    assert warning.endswith("on cpu); running it unfolded")
    assert info == ("fast execution: 0 BatchNorm layers of Odd folded, 2 left as they are (their wiring is not known "
                    "to follow a convolution)")


# --------------------------------------------------------------------------------------------------- autocast


def test_fp32_leaves_the_model_alone_and_bf16_fp16_lower_it(classifier, batch):
    inputs, _ = batch
    with torch.no_grad():
        with autocast("cpu", "fp32"):
            assert classifier.net(inputs).dtype == torch.float32
        with autocast("cpu", "bf16"):
            assert classifier.net(inputs).dtype == torch.bfloat16
        with autocast("cpu", "fp16"):
            assert classifier.net(inputs).dtype == torch.float16
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "fp8")


@pytest.mark.parametrize(
    "name,settings",
    [
        ("occlusion", OcclusionSettings(window=8, stride=8)),
        ("integrated_gradients", IntegratedGradientsSettings(n_steps=8)),
        ("guided_gradcam", GuidedGradCamSettings()),
    ],
)
def test_bf16_autocast_keeps_maps_float32_and_close_to_fp32(classifier, batch, name, settings):
    inputs, targets = batch
    method = build_method(name, classifier, settings, forward_batch=16)
    reference = method.attribute(inputs, targets, [0, 1])
    with autocast("cpu", "bf16"):
        lowered = method.attribute(inputs, targets, [0, 1])
    assert lowered.dtype == torch.float32 and torch.isfinite(lowered).all()
    assert not torch.equal(lowered, reference)  # bf16 really ran
    for i in range(2):
        assert cosine(lowered[i], reference[i]) > 0.9


# ---------------------------------------------------------------------------------------------- memory probe


def test_probe_solves_per_row_and_fixed_cost_and_fills_the_headroom():
    memory = FakeMemory(free=1_000_000, per_row=1_000, fixed=5_000)
    probe = probe_forward_batch(memory.allocate, memory, probe_rows=(4, 16), headroom=0.8, cap=4096)
    assert (probe.bytes_per_row, probe.fixed_bytes, probe.free_bytes) == (1_000, 5_000, 1_000_000)
    # (0.8 · 1e6 − 5e3) / 1e3 = 795 rows, rounded down to a multiple of 8
    assert probe.forward_batch == 792


def test_probe_is_capped_never_below_one_and_checks_its_trial_sizes():
    roomy = FakeMemory(free=10**12, per_row=10)
    assert probe_forward_batch(roomy.allocate, roomy, cap=256).forward_batch == 256
    tight = FakeMemory(free=2_000, per_row=1_000, fixed=1_900)
    assert probe_forward_batch(tight.allocate, tight).forward_batch == 1
    odd = FakeMemory(free=6_000, per_row=1_000)
    assert probe_forward_batch(odd.allocate, odd, headroom=1.0).forward_batch == 6  # < 8: not rounded
    with pytest.raises(ValueError, match="probe_rows"):
        probe_forward_batch(roomy.allocate, roomy, probe_rows=(16, 4))


def test_size_forward_batches_probes_each_kind_of_pass_once_with_the_real_model(classifier):
    memory = FakeMemory(free=100_000_000, per_row=100_000, per_row_with_grad=400_000)
    methods = {
        "occlusion": build_method("occlusion", classifier, OcclusionSettings(window=8, stride=8), 64),
        "integrated_gradients": build_method(
            "integrated_gradients", classifier, IntegratedGradientsSettings(n_steps=4), 64
        ),
        "guided_gradcam": build_method("guided_gradcam", classifier, GuidedGradCamSettings(), 64),
    }
    chosen = size_forward_batches(methods, classifier, (3, RESOLUTION, RESOLUTION), memory=memory)
    # forward only: 0.8e8 / 1e5 = 800 rows; forward + backward: 0.8e8 / 4e5 = 200 rows
    assert methods["occlusion"].forward_batch == 800
    assert methods["integrated_gradients"].forward_batch == 200
    assert methods["guided_gradcam"].forward_batch == 200
    assert chosen["integrated_gradients"] is chosen["guided_gradcam"]  # one probe per kind
    assert chosen["occlusion"].bytes_per_row == 100_000


def test_model_trial_runs_the_pass_it_stands_for(classifier):
    seen = []
    handle = classifier.net.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].shape[0], args[0].requires_grad))
    )
    try:
        model_trial(classifier.net, (3, RESOLUTION, RESOLUTION), "cpu", gradient=True)(3)
        model_trial(classifier.net, (3, RESOLUTION, RESOLUTION), "cpu", gradient=False, precision="bf16")(5)
    finally:
        handle.remove()
    assert seen == [(3, True), (5, False)]


def test_size_forward_batches_leaves_cpu_methods_alone(classifier):
    method = build_method("occlusion", classifier, OcclusionSettings(window=8, stride=8), 48)
    assert size_forward_batches({"occlusion": method}, classifier, (3, RESOLUTION, RESOLUTION)) == {}
    assert method.forward_batch == 48


# ------------------------------------------------------------------------------------------- out of memory


def test_out_of_memory_halves_and_remembers_and_the_map_is_unchanged(classifier, batch):
    import dataclasses

    inputs, targets = batch
    settings = OcclusionSettings(window=8, stride=8)  # 16 windows + 1 clean row per image: 34 rows
    expected = build_method("occlusion", classifier, settings, forward_batch=34).attribute(inputs, targets, [0, 0])
    refusing = RefusesBigBatches(classifier.net, limit=10)
    method = build_method("occlusion", dataclasses.replace(classifier, net=refusing), settings, forward_batch=64)
    policy = HalveOnOutOfMemory()

    result = policy.run(method, lambda: method.attribute(inputs, targets, [0, 0]))
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)
    assert method.forward_batch == 8 and policy.remembered == {"occlusion": 8}  # 64 → 32 → 16 → 8
    assert max(refusing.batches[-5:]) <= 8

    refusing.batches.clear()
    policy.run(method, lambda: method.attribute(inputs, targets, [0, 0]))
    assert max(refusing.batches) <= 8  # the next call starts at the remembered size: no failed pass


def test_out_of_memory_at_the_smallest_batch_and_other_errors_propagate():
    class Method:
        name, forward_batch = "m", 4

    method, policy = Method(), HalveOnOutOfMemory(min_batch=2)

    def always_oom():
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        policy.run(method, always_oom)
    assert method.forward_batch == 2 and policy.remembered == {"m": 2}

    def broken():
        raise ValueError("not a memory problem")

    method.forward_batch = 64
    with pytest.raises(ValueError):
        policy.run(method, broken)
    assert method.forward_batch == 64


def test_cpu_allocator_failure_counts_as_out_of_memory():
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# ------------------------------------------------------------------------------------------------- feeding


def test_prefetch_keeps_order_and_runs_at_most_depth_ahead():
    staged: list[int] = []
    lock = threading.Lock()

    def stage(item: int) -> int:
        with lock:
            staged.append(item)
        return item * 10

    consumed = []
    stream = prefetch(range(6), stage, depth=2)
    for value in stream:
        with lock:
            # staged: the item in hand, up to `depth` waiting in the queue, and one being staged by the thread
            assert len(staged) - len(consumed) <= 2 + 2
        consumed.append(value)
    assert consumed == [0, 10, 20, 30, 40, 50] and staged == list(range(6))


def test_prefetch_raises_where_the_error_happened_and_stops_when_closed():
    def stage(item: int) -> int:
        if item == 3:
            raise KeyError("bad item")
        return item

    received = []
    with pytest.raises(KeyError, match="bad item"):
        for value in prefetch(range(10), stage):
            received.append(value)
    assert received == [0, 1, 2]

    before = {t.ident for t in threading.enumerate() if t.name == "xcv-prefetch"}
    stream = prefetch(iter(range(1000)), lambda x: x, depth=1)
    assert next(stream) == 0
    stream.close()
    assert {t.ident for t in threading.enumerate() if t.name == "xcv-prefetch"} <= before


def test_device_feeder_on_cpu_delivers_the_same_values_in_the_asked_layout():
    cpu = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    plain = DeviceFeeder("cpu").send(cpu).wait()
    assert torch.equal(plain, cpu) and plain.is_contiguous()
    nhwc = DeviceFeeder("cpu", channels_last=True).send(cpu).wait()
    assert torch.equal(nhwc, cpu) and nhwc.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------- sensitivity and segmentation


class CountingGradient(AttributionMethod):
    """x · ∂f_t/∂x, counting its calls and the images in each."""

    name, settings_type = "counting", dict

    def __init__(self, classifier):
        super().__init__(classifier, {}, forward_batch=8)
        self.calls: list[int] = []

    def attribute(self, inputs, targets, seeds):
        self.calls.append(inputs.shape[0])
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.classifier.net(x).gather(1, targets.view(-1, 1)).sum(), x)
        return (grad * x).detach()


def test_sensitivity_explains_all_copies_of_all_images_in_one_call(classifier, batch):
    inputs, targets = batch
    method = CountingGradient(classifier)
    attributions = method.attribute(inputs, targets, [0, 0])
    method.calls.clear()
    common = dict(seeds=[0, 0], attributions=attributions, noise_seeds=[4, 5], n_perturb_samples=5, perturb_radius=0.02)
    together = sensitivity_max(method, inputs, targets, **common)
    assert method.calls == [10]
    sliced = sensitivity_max(method, inputs, targets, batch_images=3, **common)
    assert method.calls == [10, 3, 3, 2, 2]  # balanced slices of at most 3
    torch.testing.assert_close(together, sliced, rtol=1e-5, atol=0)


def test_lime_with_a_segmentation_process_pool_equals_lime_inline(classifier, batch):
    inputs, targets = batch
    settings = LimeSettings(num_samples=24, kernel_size=1.0, max_dist=10.0)
    previous = segmentation._pool_workers
    try:
        segmentation.set_segmentation_workers(1)
        inline = Lime(classifier, settings, forward_batch=16).attribute(inputs, targets, [5, 6])
        segmentation.set_segmentation_workers(2)
        pooled_method = Lime(classifier, settings, forward_batch=16)
        pooled = pooled_method.attribute(inputs, targets, [5, 6])
        assert segmentation._pool is not None  # the pool really ran
    finally:
        segmentation.set_segmentation_workers(previous)
    assert torch.equal(pooled, inline)
    assert pooled_method.last_num_segments[0] > 5


def test_cpu_auto_forward_batch_keeps_pixels_per_pass_above_64_px():
    from xcv_batch.execution.explain import CPU_FORWARD_BATCH, CPU_FORWARD_BATCH_MIN, cpu_forward_batch

    assert [cpu_forward_batch(size) for size in (32, 64)] == [CPU_FORWARD_BATCH] * 2
    assert cpu_forward_batch(96) == 64 * 64 * 64 // 96**2 == 28
    assert [cpu_forward_batch(size) for size in (128, 224, 512)] == [CPU_FORWARD_BATCH_MIN] * 3
