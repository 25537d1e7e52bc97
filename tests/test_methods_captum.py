"""The four Captum-based methods: equal to per-image Captum 0.9, hand-computable on tiny models, and unchanged by
``forward_batch`` and by which images share a batch.

Captum runs on a torchvision twin of the classifier (plain ``nn.ReLU``s, same state dict), one image at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import skimage.data
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedGradCam as CaptumGuidedGradCam
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import NoiseTunnel
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from net_helpers import give_biases
from xcv_batch.config import job_from_mapping, load_job
from xcv_batch.errors import ConfigError
from xcv_batch.methods import build_method, method_names, method_spec
from xcv_batch.methods.ig_smoothgrad import seeded_noise, smooth
from xcv_batch.methods.occlusion import window_cover
from xcv_batch.methods.settings import (
    GuidedGradCamSettings,
    IGSmoothGradSettings,
    IntegratedGradientsSettings,
    LimeSettings,
    OcclusionSettings,
)
from xcv_batch.models.classifier import (
    Classifier,
    Preprocessing,
    auto_target_layer,
    build_classifier,
)

pytestmark = [
    # Captum's own chatter about hooks and requires_grad, on the reference side only.
    pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning"),
]

IG = IntegratedGradientsSettings(n_steps=8)
IG_SG = IGSmoothGradSettings(nt_samples=3, nt_type="smoothgrad_sq", stdevs=0.5, n_steps=4)
GUIDED_GRADCAM = GuidedGradCamSettings()


@dataclass
class Case:
    """A classifier, its Captum twin and a few images with a different target each."""

    classifier: Classifier
    reference: nn.Module
    reference_layer: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    seeds: list[int]

    def first(self, n: int) -> "Case":
        return Case(self.classifier, self.reference, self.reference_layer, self.inputs[:n], self.targets[:n],
                    self.seeds[:n])


def photo(image, size: int, seed: int) -> torch.Tensor:
    """(1, 3, size, size): the centre square of a skimage photo, downsampled, with a little seeded noise.

    The noise keeps the input in general position: flat or saturated patches give exactly tied activations, and a
    max-pool's tie is broken by float rounding, which differs between batch sizes and would route the gradient to
    another pixel.
    """
    pixels = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
    height, width = pixels.shape[2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = F.interpolate(pixels[..., top:top + side, left:left + side], size=(size, size), mode="area")
    generator = torch.Generator().manual_seed(seed)
    return square + 0.02 * torch.randn(square.shape, generator=generator)




def make_case(arch: str, resolution: int, photos: list, targets: list[int], dtype=torch.float32) -> Case:
    classifier = build_classifier(arch, "none", resolution, seed=0)
    give_biases(classifier.net, seed=1)
    reference = torchvision.models.get_model(arch, weights=None)
    reference.load_state_dict(classifier.net.state_dict())  # SwitchableReLU has no parameters: the keys match
    reference.eval()
    classifier.net.to(dtype)
    reference.to(dtype)
    pixels = torch.cat([photo(image, resolution, seed=i) for i, image in enumerate(photos)])
    return Case(
        classifier=classifier,
        reference=reference,
        reference_layer=dict(reference.named_modules())[auto_target_layer(classifier.net)],
        inputs=classifier.preprocessing.normalize(pixels).to(dtype),
        targets=torch.tensor(targets, dtype=torch.int64),
        seeds=[101 + i for i in range(len(targets))],
    )


# Gradients of ReLU/max-pool nets jump where an activation sits at a kink; float32 rounding, which differs with the
# batch size (oneDNN picks kernels by shape), moves near-kink activations across it and changes a map by up to
# ~1e-3 of its maximum. The gradient methods are therefore compared in float64, where only a real difference in
# the computation shows. Occlusion has no gradient and is compared in float32 too, the dtype jobs run in.


@pytest.fixture(scope="module")
def resnet_float32() -> Case:
    photos = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee()]
    return make_case("resnet18", 64, photos, [3, 281, 950])


@pytest.fixture(scope="module")
def resnet() -> Case:
    # Targets whose Grad-CAM is not all zero (the relu of a random net's CAM often is, and 0 = 0 proves nothing).
    photos = [skimage.data.chelsea(), skimage.data.rocket(), skimage.data.coffee()]
    return make_case("resnet18", 48, photos, [25, 400, 975], dtype=torch.float64)


@pytest.fixture(scope="module")
def vgg() -> Case:
    # 32 px is VGG-19's smallest input (five 2× max-pools). Its random init takes seconds and, in float64, its
    # 120M-parameter head makes every pass slow at any size: built once, one image.
    return make_case("vgg19", 32, [skimage.data.chelsea()], [350], dtype=torch.float64)


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """Worst over images of max |ours − expected| / max |expected| of that image's map."""
    assert ours.shape == expected.shape and ours.dtype == torch.float32
    worst = 0.0
    for mine, theirs in zip(ours.double(), expected.double()):
        scale = theirs.abs().max().item()
        assert scale > 0, "a reference map is all zeros: the comparison would be vacuous"
        worst = max(worst, (mine - theirs).abs().max().item() / scale)
    return worst


def per_image(case: Case, explain) -> torch.Tensor:
    return torch.cat(
        [explain(case.inputs[i:i + 1], int(case.targets[i]), case.seeds[i]) for i in range(len(case.targets))]
    )


# --- Captum references -------------------------------------------------------------------------------------------


def captum_occlusion(case: Case, settings: OcclusionSettings) -> torch.Tensor:
    w, s = settings.window, settings.stride
    return per_image(
        case,
        lambda x, target, seed: CaptumOcclusion(case.reference).attribute(
            x, sliding_window_shapes=(3, w, w), strides=(3, s, s), baselines=settings.baseline, target=target,
            perturbations_per_eval=64,
        ),
    )


def captum_integrated_gradients(case: Case, settings: IntegratedGradientsSettings) -> torch.Tensor:
    return per_image(
        case,
        lambda x, target, seed: CaptumIntegratedGradients(case.reference).attribute(
            x, target=target, n_steps=settings.n_steps, method=settings.method
        ),
    )


def captum_ig_smoothgrad(case: Case, settings: IGSmoothGradSettings, monkeypatch) -> torch.Tensor:
    """NoiseTunnel(IG) per image, its ``torch.normal`` draw replaced by the noise our seeds give."""

    def explain(x, target, seed):
        noise = seeded_noise(seed, settings.nt_samples, x.shape[1:], settings.stdevs, x.device)
        calls = []

        def normal_with_our_noise(mean, std, *args, **kwargs):
            # NoiseTunnel._add_noise_to_input asks for (batch · nt_samples, C, H, W), image-major; batch = 1 here.
            assert mean == 0 and tuple(std.shape) == tuple(noise.shape)
            assert torch.all(std == settings.stdevs)
            calls.append(1)
            return noise.clone()

        with monkeypatch.context() as patch:
            patch.setattr(torch, "normal", normal_with_our_noise)
            result = NoiseTunnel(CaptumIntegratedGradients(case.reference)).attribute(
                x, nt_type=settings.nt_type, nt_samples=settings.nt_samples, stdevs=float(settings.stdevs),
                n_steps=settings.n_steps, method=settings.method, target=target,
            )
        assert len(calls) == 1, "Captum did not draw its noise through torch.normal once: the patch missed"
        return result

    return per_image(case, explain)


def captum_guided_gradcam(case: Case, settings: GuidedGradCamSettings) -> torch.Tensor:
    return per_image(
        case,
        lambda x, target, seed: CaptumGuidedGradCam(case.reference, case.reference_layer).attribute(
            x, target=target, interpolate_mode=settings.interpolate_mode
        ),
    )


def ours(name: str, case: Case, settings, forward_batch: int = 20) -> torch.Tensor:
    """Our method on the whole batch; 20 rows per forward splits every method's rows across image boundaries."""
    method = build_method(name, case.classifier, settings, forward_batch=forward_batch)
    return method.attribute(case.inputs, case.targets, case.seeds)


# --- equality with Captum ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, settings",
    [
        # 64 px: 6 × 6 windows, the last at 50 clipped to 14 px; 32 px: 3 × 3 windows, the last at 20 clipped to 12.
        ("resnet_float32", OcclusionSettings(window=16, stride=10, baseline=0.0)),
        ("vgg", OcclusionSettings(window=16, stride=10, baseline=-1.5)),
    ],
)
def test_occlusion_matches_captum(model, settings, request):
    case = request.getfixturevalue(model)
    assert relative_error(ours("occlusion", case, settings), captum_occlusion(case, settings)) < 1e-4


@pytest.mark.parametrize(
    "model, settings",
    [
        ("resnet", IG),
        ("resnet", IntegratedGradientsSettings(n_steps=3, method="riemann_trapezoid")),
        ("vgg", IntegratedGradientsSettings(n_steps=2)),
    ],
)
def test_integrated_gradients_matches_captum(model, settings, request):
    case = request.getfixturevalue(model)
    expected = captum_integrated_gradients(case, settings)
    assert relative_error(ours("integrated_gradients", case, settings), expected) < 1e-4


@pytest.mark.parametrize(
    "model, settings",
    [
        ("resnet", IG_SG),
        ("vgg", IGSmoothGradSettings(nt_samples=2, nt_type="vargrad", stdevs=0.5, n_steps=2)),
    ],
)
def test_ig_smoothgrad_matches_captum_noise_tunnel(model, settings, request, monkeypatch):
    case = request.getfixturevalue(model).first(2)
    expected = captum_ig_smoothgrad(case, settings, monkeypatch)
    assert relative_error(ours("ig_smoothgrad", case, settings), expected) < 1e-4


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothing_formulas_are_captums(nt_type):
    samples = torch.randn(2, 5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    n_samples = samples.shape[1]
    expected = NoiseTunnel._compute_smoothing(
        (samples.sum(1) * 1 / n_samples,), (samples.pow(2).sum(1) * 1 / n_samples,), nt_type
    )[0]
    assert torch.allclose(smooth(samples, nt_type), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "model, settings",
    [
        ("resnet", GUIDED_GRADCAM),
        ("resnet", GuidedGradCamSettings(interpolate_mode="bilinear")),
        ("vgg", GUIDED_GRADCAM),
    ],
)
def test_guided_gradcam_matches_captum(model, settings, request):
    case = request.getfixturevalue(model)
    expected = captum_guided_gradcam(case, settings)
    assert relative_error(ours("guided_gradcam", case, settings, forward_batch=2), expected) < 1e-4


@pytest.mark.parametrize("model, one_backward", [("resnet", True), ("vgg", False)])
def test_guided_gradcam_takes_one_backward_where_no_relu_follows_its_layer(model, one_backward, request):
    """ResNet's layer4 is followed by pooling and a linear head: one guided backward gives both gradients, the same
    numbers as a plain backward to the layer and then a guided one. VGG's head has ReLUs: two backwards."""
    case = request.getfixturevalue(model)
    method = build_method("guided_gradcam", case.classifier, GUIDED_GRADCAM, forward_batch=20)
    assert method.one_backward is one_backward
    if one_backward:
        once = method.attribute(case.inputs, case.targets, case.seeds)
        method.one_backward = False
        assert torch.equal(once, method.attribute(case.inputs, case.targets, case.seeds))
        assert once.abs().amax(dim=(1, 2, 3)).min() > 0


def test_guided_gradcam_leaves_no_hook_and_the_guided_switch_off(resnet_float32):
    classifier = resnet_float32.classifier
    layer = classifier.net.layer4
    hooks_before = len(layer._forward_hooks)
    method = build_method("guided_gradcam", classifier, GUIDED_GRADCAM, forward_batch=20)
    method.attribute(resnet_float32.inputs, resnet_float32.targets, resnet_float32.seeds)
    assert len(layer._forward_hooks) == hooks_before
    assert method.switch.guided is False


# --- every method that names its oracle ------------------------------------------------------------------------


def assert_matches_its_oracle(name: str, case: Case, settings) -> None:
    """The batched method equals its registered per-image reference on the stock twin network."""
    oracle = method_spec(name).load_oracle()
    expected = per_image(case, lambda x, target, seed: oracle(case.reference, x, target, settings))
    assert relative_error(ours(name, case, settings), expected) < 1e-4


ORACLE_SETTINGS = {  # small enough for 48 px float64; a method not listed runs with its defaults
    "occlusion": OcclusionSettings(window=16, stride=10),
    "integrated_gradients": IntegratedGradientsSettings(n_steps=4),
}


@pytest.mark.parametrize("name", [name for name in method_names() if method_spec(name).oracle])
def test_every_method_that_names_an_oracle_matches_it(name, resnet):
    assert not method_spec(name).stochastic, "an oracle is compared map for map: deterministic methods only"
    assert_matches_its_oracle(name, resnet, ORACLE_SETTINGS.get(name) or method_spec(name).settings())


def test_the_deterministic_methods_name_their_oracles():
    named = {name for name in method_names() if method_spec(name).oracle}
    assert named == {name for name in method_names() if not method_spec(name).stochastic}


# --- invariance to forward_batch and to batch composition --------------------------------------------------------
# The ResNet and VGG checks above already run with chunks that span images. Here each method runs four times, once
# with a single row per forward, so a small conv net (BatchNorm, in-place ReLU, max-pool, like the big ones) keeps
# it fast; float64 so that only the batching itself could make a difference (see the note on kinks above).


@pytest.fixture(scope="module")
def small_cnn() -> Case:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
        )
    give_biases(net, seed=1)
    net = net.eval().requires_grad_(False).double()
    preprocessing = Preprocessing(32, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    classifier = Classifier(
        arch="small_cnn", net=net, device=torch.device("cpu"), preprocessing=preprocessing, num_classes=10,
        categories=None, weights="none",
    )
    photos = [skimage.data.chelsea(), skimage.data.rocket(), skimage.data.coffee()]
    pixels = torch.cat([photo(image, 32, seed=i) for i, image in enumerate(photos)])
    inputs = preprocessing.normalize(pixels).double()
    # No Captum twin here: the invariance checks compare the method with itself.
    return Case(classifier, net, net[5], inputs, torch.tensor([1, 4, 8]), [7, 8, 9])


#: Small settings for the registered methods; a method not named here runs with its settings' defaults.
INVARIANCE_SETTINGS = {
    # 32 px: 6 × 6 windows at 0, 5, …, 25 (the last clipped to 7 px), overlapping.
    "occlusion": OcclusionSettings(window=8, stride=5, baseline=0.0),
    "integrated_gradients": IG,
    "ig_smoothgrad": IG_SG,
    "guided_gradcam": GUIDED_GRADCAM,
    # quickshift at kernel_size=1 leaves ~10 superpixels on a 32 px photo
    "lime": LimeSettings(num_samples=30, kernel_size=1.0, max_dist=10.0),
}


def small_settings(name: str):
    return INVARIANCE_SETTINGS.get(name) or method_spec(name).settings()


@pytest.mark.parametrize("name", method_names())
def test_result_does_not_depend_on_forward_batch_or_batch_mates(name, small_cnn):
    case, settings = small_cnn, small_settings(name)
    reference = ours(name, case, settings, forward_batch=7)  # chunks of 7 span image boundaries
    assert reference.abs().amax(dim=(1, 2, 3)).min() > 0
    for forward_batch in (1, 1000):
        assert relative_error(ours(name, case, settings, forward_batch=forward_batch), reference) <= 1e-5

    # The middle image alone, with its own seed, gives its map from the batch of three.
    alone = build_method(name, case.classifier, settings, forward_batch=7).attribute(
        case.inputs[1:2], case.targets[1:2], case.seeds[1:2]
    )
    assert relative_error(alone, reference[1:2]) <= 1e-5


# --- seeds -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", method_names())
def test_seeds_change_the_map_exactly_when_the_method_is_registered_stochastic(name, small_cnn):
    spec, case = method_spec(name), small_cnn
    method = build_method(name, case.classifier, small_settings(name), forward_batch=7)
    assert (type(method).name, method.stochastic, method.differentiates) == (name, spec.stochastic,
                                                                             spec.differentiates)
    image, target = case.inputs[:1], case.targets[:1]
    first = method.attribute(image, target, [5])
    assert torch.equal(method.attribute(image, target, [5]), first)
    other = method.attribute(image, target, [6])
    if spec.stochastic:
        assert relative_error(other, first) > 1e-2
    else:
        assert torch.equal(other, first)




def test_ig_smoothgrad_same_seed_same_map_other_seed_other_map(resnet_float32):
    method = build_method("ig_smoothgrad", resnet_float32.classifier, IG_SG, forward_batch=16)
    image, target = resnet_float32.inputs[:1], resnet_float32.targets[:1]
    first = method.attribute(image, target, [5])
    assert method.stochastic is True
    assert torch.equal(method.attribute(image, target, [5]), first)
    other = method.attribute(image, target, [6])
    assert relative_error(other, first) > 1e-2


# --- hand-computable values on tiny linear models ----------------------------------------------------------------


def linear_classifier(size: int, weight: torch.Tensor) -> Classifier:
    """f(x) = weight · flatten(x) + bias on (N, 3, size, size) inputs; ``weight`` is (classes, 3·size²)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.fill_(0.25)  # any bias: occlusion takes differences, IG differentiates
    net = nn.Sequential(nn.Flatten(), linear).eval().requires_grad_(False)
    return Classifier(
        arch="linear", net=net, device=torch.device("cpu"),
        preprocessing=Preprocessing(size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        num_classes=weight.shape[0], categories=None, weights="none",
    )


def summing_classifier(size: int) -> Classifier:
    """Class 0 sums every input value: occlusion of a window drops f by the sum of (x − baseline) inside it."""
    return linear_classifier(size, torch.stack([torch.ones(3 * size * size), torch.zeros(3 * size * size)]))


def test_window_cover_follows_captum_starts_and_clips_the_last_window():
    # 5 px, window 2, stride 2: ceil(3 / 2) + 1 = 3 windows at 0, 2, 4; the last one holds a single pixel.
    assert window_cover(5, 2, 2).int().tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    # 5 px, window 3, stride 2: windows at 0 and 2, overlapping on pixel 2.
    assert window_cover(5, 3, 2).int().tolist() == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]]


def test_occlusion_on_a_summing_model_with_clipped_windows():
    method = build_method("occlusion", summing_classifier(5), OcclusionSettings(window=2, stride=2), 4)
    result = method.attribute(torch.ones(1, 3, 5, 5), torch.tensor([0]), [0])
    # Each pixel lies in one window per axis: 2 px wide except the clipped last (1 px); 3 channels of ones.
    full, edge, corner = 3 * 2 * 2, 3 * 2 * 1, 3 * 1 * 1
    expected = torch.tensor([[full] * 4 + [edge]] * 4 + [[edge] * 4 + [corner]], dtype=torch.float32)
    assert torch.allclose(result, expected.expand(1, 3, 5, 5), rtol=0, atol=1e-5)


def test_occlusion_on_a_summing_model_averages_overlapping_windows():
    settings = OcclusionSettings(window=3, stride=2, baseline=0.5)
    method = build_method("occlusion", summing_classifier(5), settings, 3)
    inputs = torch.ones(2, 3, 5, 5)
    inputs[1, :, 2, 2] = 3.0  # the centre pixel lies in all four windows of the second image
    result = method.attribute(inputs, torch.tensor([0, 0]), [0, 0])
    # Every window is 3×3×3 values of (1 − 0.5) = 13.5; the second image's windows each also hold 3 × (3 − 1) more.
    assert torch.allclose(result[0], torch.full((3, 5, 5), 13.5), rtol=0, atol=1e-5)
    assert torch.allclose(result[1], torch.full((3, 5, 5), 19.5), rtol=0, atol=1e-5)


def test_occlusion_on_a_linear_model_matches_captum():
    torch.manual_seed(0)
    classifier = linear_classifier(9, torch.randn(3, 3 * 9 * 9))
    inputs, targets = torch.randn(3, 3, 9, 9), torch.tensor([2, 0, 1])
    settings = OcclusionSettings(window=4, stride=3, baseline=0.3)
    ours_ = build_method("occlusion", classifier, settings, 5).attribute(inputs, targets, [0, 1, 2])
    case = Case(classifier, classifier.net, classifier.net, inputs, targets, [0, 1, 2])
    assert relative_error(ours_, captum_occlusion(case, settings)) < 1e-5


def test_integrated_gradients_of_a_linear_model_is_weight_times_input():
    torch.manual_seed(0)
    weight = torch.randn(2, 3 * 6 * 6)
    classifier = linear_classifier(6, weight)
    inputs, targets = torch.randn(2, 3, 6, 6), torch.tensor([1, 0])
    result = build_method("integrated_gradients", classifier, IG, 5).attribute(inputs, targets, [0, 0])
    expected = weight[targets].view(2, 3, 6, 6) * inputs  # the gradient is constant along the path
    assert relative_error(result, expected) < 1e-5


# --- configuration errors raised before any work -----------------------------------------------------------------


def test_occlusion_window_larger_than_the_input_is_a_config_error():
    method = build_method("occlusion", summing_classifier(5), OcclusionSettings(window=6, stride=2), 4)
    with pytest.raises(ConfigError, match="methods.occlusion.window"):
        method.attribute(torch.ones(1, 3, 5, 5), torch.tensor([0]), [0])


@pytest.mark.parametrize("name", ["integrated_gradients", "ig_smoothgrad"])
def test_riemann_rule_with_one_step_is_a_config_error(name):
    # Captum only asserts n_steps > 1; the job loader says which key is wrong before any work.
    with pytest.raises(ConfigError, match=f"methods.{name}.n_steps"):
        job_from_mapping({"methods": {name: {"n_steps": 1, "method": "riemann_left"}}})


def test_occlusion_window_larger_than_the_resolution_is_refused_when_the_job_loads(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model: {resolution: 32}\nmethods: {occlusion: {window: 40, stride: 8}}\n")
    with pytest.raises(ConfigError, match="methods.occlusion.window"):
        load_job(str(path))
