"""Guided Grad-CAM (Selvaraju et al. 2017) as Captum's ``GuidedGradCam(net, layer).attribute(x, target=t)``.

Captum runs two full passes (LayerGradCam, then GuidedBackprop with ReLU hooks). Here the method swaps the network's
ReLUs for switchable ones when it is built (:mod:`.guided_backprop`), which read the guided-backprop switch at
backward time, so one forward pass per chunk serves both: a plain backward to the layer's output for Grad-CAM (kept
with ``retain_graph``), then a guided backward to the input. Where no ReLU runs after the layer (a ResNet's
``layer4``: pooling and the linear head follow), the switch changes nothing between the layer and the score, so one
guided backward gives both gradients, and the head's second backward and its fixed costs are saved. That forward is
also the engine's classifying forward when the batch fits one chunk (``attribute_classifying``).
Grad-CAM = relu(Σ_c mean_hw(∂y/∂A_c) · A_c), upsampled to the input size and multiplied into the guided gradient.

A network whose activations are not all ``nn.ReLU`` modules (GELU, SiLU, Hardswish, functional ReLUs) is refused
with :class:`~xcv_batch.errors.MethodUnavailable` when the method is built: guided backprop is defined for those
modules only, so the result there would not be Guided Grad-CAM. The other methods of the job still run.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MethodUnavailable, ModelError
from ..models.classifier import check_forward
from ..models.layers import auto_target_layer, blank_forward, layer_candidates
from .base import AttributionMethod, chunk_slices, target_outputs
from .guided_backprop import guided_backprop_obstacle, install_guided_switch
from .settings import GuidedGradCamSettings


@contextlib.contextmanager
def capture_output(layer: nn.Module) -> Iterator[dict]:
    """While open, ``captured["output"]`` is the layer's latest output (the last call wins, as in Captum)."""
    captured: dict = {}

    def keep(module: nn.Module, args, output) -> None:
        captured["output"] = output

    handle = layer.register_forward_hook(keep)  # a dict insert; cheap enough to do per call, and never leaks
    try:
        yield captured
    finally:
        handle.remove()


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) layer output and its gradient → (N, 1, h, w) Captum LayerGradCam, relu_attributions=True."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations).sum(dim=1, keepdim=True))


def resolve_layer(classifier, layer: str) -> str:
    """``settings.layer`` (``auto`` included) as a module name of ``classifier.net``; ``ConfigError`` unless its
    output for one blank image at the classifier's resolution is (N, C, h, w) maps."""
    net = classifier.net
    name = auto_target_layer(net, classifier.preprocessing.crop_size) if layer == "auto" else layer
    if name not in dict(net.named_modules()):
        candidates = ", ".join(layer_candidates(net))
        raise ConfigError("methods.guided_gradcam.layer",
                          f"'{layer}' is not a layer of {classifier.arch}; one of: {candidates}")
    shape = check_forward(net, classifier.arch, classifier.preprocessing.crop_size, name)
    if len(shape) != 4:
        raise ConfigError(
            "methods.guided_gradcam.layer",
            f"{name} gives {shape}, not the (batch, channels, height, width) maps Grad-CAM weighs; name a "
            "convolutional block",
        )
    return name


def check_layer(classifier, settings: GuidedGradCamSettings) -> None:
    """The spec's ``check_model``: the layer is resolved and checked as the method's build does, without the rest of
    the build (``run --dry-run`` calls it on the architecture with random weights)."""
    resolve_layer(classifier, settings.layer)


def relus_after(net: nn.Module, layer: nn.Module, resolution: int) -> bool:
    """Whether a ReLU module of ``net`` runs after ``layer`` has given its output, in one blank forward (a ReLU that
    runs later may lie between the layer and the score, where the guided switch would change the layer's gradient;
    one that is the layer itself does not)."""
    order: list[str] = []
    handles = [module.register_forward_hook(lambda *_: order.append("relu"))
               for module in net.modules() if isinstance(module, nn.ReLU) and module is not layer]
    handles.append(layer.register_forward_hook(lambda *_: order.append("layer")))
    blank_forward(net, resolution, handles)
    if "layer" not in order:
        return True  # never seen: keep the two backwards, whose first one says what is wrong with the layer
    return "relu" in order[len(order) - order[::-1].index("layer"):]


class GuidedGradCam(AttributionMethod):
    """Registered as ``guided_gradcam`` in methods/settings.py.

    Built in four steps, each before any image: the network's activations are checked (one blank forward; a
    refusal leaves the network as it was), its ReLUs are made switchable (once per network: a second method on it
    shares the switch), the layer is resolved and checked (another blank forward), and a third blank forward sees
    whether any ReLU runs after the layer (if none does, one backward per chunk serves both gradients).
    """

    def __init__(self, classifier, settings: GuidedGradCamSettings, forward_batch: int = 64):
        super().__init__(classifier, settings, forward_batch)
        obstacle = guided_backprop_obstacle(classifier.net, classifier.preprocessing.crop_size)
        if obstacle is not None:
            raise MethodUnavailable(f"{self.name}: guided backprop needs nn.ReLU activations; {classifier.arch} "
                                    f"{obstacle}")
        self.switch = install_guided_switch(classifier.net)
        self.layer_name = resolve_layer(classifier, settings.layer)
        self.layer: nn.Module = dict(classifier.net.named_modules())[self.layer_name]
        #: one guided backward gives the layer's gradient too (no ReLU after the layer); else a plain one first
        self.one_backward = not relus_after(classifier.net, self.layer, classifier.preprocessing.crop_size)

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        targets = targets.to(inputs.device)
        return self._attribute(inputs, lambda chunk, outputs: targets[chunk])

    def classifies_batch(self, images: int) -> bool:
        """Its forward is the engine's classifying forward when the images go through the model as one chunk."""
        return images <= self.forward_batch

    def attribute_classifying(self, inputs: torch.Tensor, seeds: Sequence[int], pick) -> torch.Tensor:
        if not self.classifies_batch(inputs.shape[0]):
            raise ValueError(f"{inputs.shape[0]} images do not fit one forward batch of {self.forward_batch}")
        return self._attribute(inputs, lambda chunk, outputs: pick(outputs.detach()))

    def _attribute(self, inputs: torch.Tensor, targets_of) -> torch.Tensor:
        """The maps, with ``targets_of(chunk, outputs)`` the targets of a chunk's images given its forward's outputs."""
        settings: GuidedGradCamSettings = self.settings
        classifier = self.classifier
        layer_name = self.layer_name
        chunks = list(chunk_slices(inputs.shape[0], self.forward_batch))
        result = torch.empty_like(inputs, dtype=torch.float32) if len(chunks) > 1 else None
        with capture_output(self.layer) as captured:
            for chunk in chunks:
                images = inputs[chunk].detach().requires_grad_(True)
                captured.clear()
                with torch.enable_grad():
                    outputs = classifier.net(images)
                    score = target_outputs(outputs, targets_of(chunk, outputs)).sum()
                    activations = captured.get("output")
                    if not isinstance(activations, torch.Tensor) or activations.dim() != 4:
                        raise ModelError(
                            f"methods.guided_gradcam.layer: '{layer_name}' must output one (N, C, h, w) tensor "
                            "during the forward pass; pick a convolutional block"
                        )
                    if self.one_backward:
                        with self.switch.enabled():
                            layer_grads, guided_grads = torch.autograd.grad(score, (activations, images))
                    else:
                        (layer_grads,) = torch.autograd.grad(score, activations, retain_graph=True)
                        with self.switch.enabled():
                            (guided_grads,) = torch.autograd.grad(score, images)
                with torch.no_grad():
                    # float32 even under bf16/fp16 autocast: the channel means and the weighted sum lose little
                    # there, but the map is the product of two small numbers.
                    cam = grad_cam(activations.detach().float(), layer_grads.float())
                    cam = F.interpolate(cam, size=tuple(inputs.shape[2:]), mode=settings.interpolate_mode)
                    maps = (guided_grads * cam).float()
                if result is None:  # the batch in one chunk: its maps are the result, no copy into a buffer
                    return maps
                result[chunk] = maps
        return result
