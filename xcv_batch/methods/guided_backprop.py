"""Guided backpropagation's ReLU switch, and the check that a network's activations let it be applied faithfully.

Guided Grad-CAM installs a :class:`SwitchableReLU` in place of every ``nn.ReLU`` of the network it is given: it
computes exactly what ReLU computes, forward and backward, until its :class:`GuidedBackpropSwitch` is on; then its
backward also clamps the incoming gradient at zero, which is guided backpropagation (Springenberg et al. 2015) as
Captum's ``GuidedBackprop`` does it. The switch is read at *backward* time, so one forward pass serves both
Grad-CAM's plain backward and the guided one, and the modules are swapped once per network instead of hooked per
call. Swapping modules also catches torchvision's in-place ReLUs, which forward/backward hooks handle badly.

Guided backprop is defined for ReLU networks: Captum applies it to ``nn.ReLU`` modules only, so on a network with
GELU, SiLU, Hardswish, … or with ReLUs applied as functions its result is mostly a plain gradient under another
name. :func:`guided_backprop_obstacle` finds such activations in one blank forward pass.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class GuidedBackpropSwitch:
    """Shared by every SwitchableReLU of one network; ``with switch.enabled():`` turns guided backprop on."""

    def __init__(self) -> None:
        self.guided = False

    @contextlib.contextmanager
    def enabled(self) -> Iterator[None]:
        self.guided = True
        try:
            yield
        finally:
            self.guided = False


class _SwitchableReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, switch: GuidedBackpropSwitch) -> torch.Tensor:  # type: ignore[override]
        out = torch.relu(x)
        ctx.save_for_backward(out)
        ctx.switch = switch
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        grad_in = torch.ops.aten.threshold_backward(grad_out, out, 0)  # ReLU's own backward kernel
        if ctx.switch.guided:
            # Captum's GuidedBackprop returns relu(grad_input) from its ReLU backward hook; same thing.
            grad_in.clamp_min_(0)  # in place: threshold_backward's result is a fresh tensor
        return grad_in, None


class SwitchableReLU(nn.ReLU):
    """``nn.ReLU`` whose backward turns into guided backprop while its switch is on (still an ``nn.ReLU``, so layer
    finding and the incremental occlusion treat it as one)."""

    def __init__(self, switch: GuidedBackpropSwitch, inplace: bool = False):
        super().__init__(inplace=inplace)
        self.switch = switch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _SwitchableReLUFunction.apply(x, self.switch)
        # No gradient wanted (occlusion, LIME): the plain kernel, in place where the original was.
        return torch.relu_(x) if self.inplace else torch.relu(x)


def make_relus_switchable(net: nn.Module, switch: GuidedBackpropSwitch) -> int:
    """Replace every plain ``nn.ReLU`` in ``net`` (recursively) with a SwitchableReLU; returns how many."""
    count = 0
    for name, child in list(net.named_children()):
        if type(child) is nn.ReLU:
            setattr(net, name, SwitchableReLU(switch, inplace=child.inplace))
            count += 1
        else:
            count += make_relus_switchable(child, switch)
    return count


def install_guided_switch(net: nn.Module) -> GuidedBackpropSwitch:
    """The one switch of ``net``'s ReLUs, swapping them for SwitchableReLUs first where that is not done yet.

    A network that already has them (a second Guided Grad-CAM on it) keeps its switch, so every method built on it
    drives the same modules; a deep copy of such a network gets a switch of its own with its own modules.
    """
    existing = [module for module in net.modules() if isinstance(module, SwitchableReLU)]
    switch = existing[0].switch if existing else GuidedBackpropSwitch()
    for module in existing:
        module.switch = switch
    make_relus_switchable(net, switch)
    return switch


# ------------------------------------------------------------------------------------------- which activations
#: Activation functions other than ReLU, by the ``__name__`` of the torch function that computes them, and how the
#: refusal names them. Gates (sigmoid, tanh, softmax) are not in the list: guided backprop leaves them as gradients
#: in Captum's definition too, and they do not replace the rectifiers it is about.
OTHER_ACTIVATIONS = {
    "gelu": "GELU", "silu": "SiLU", "hardswish": "Hardswish", "mish": "Mish", "elu": "ELU", "selu": "SELU",
    "celu": "CELU", "leaky_relu": "LeakyReLU", "rrelu": "RReLU", "prelu": "PReLU", "relu6": "ReLU6",
    "hardtanh": "Hardtanh", "softplus": "Softplus", "glu": "GLU",
}


class _ActivationCalls(TorchFunctionMode):
    """Records activation functions called during a forward pass, and where (the innermost module running)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stack: list[tuple[str, nn.Module]] = []
        #: (what the activation is called, the module running it, whether that module is an nn.ReLU)
        self.calls: list[tuple[str, str, bool]] = []
        self._names = {module: name for name, module in net.named_modules()}

    def enter(self, module: nn.Module, args) -> None:
        self.stack.append((self._names.get(module, ""), module))

    def leave(self, module: nn.Module, args, output) -> None:
        self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "").rstrip("_")
        if name == "relu" or name in OTHER_ACTIVATIONS:
            where, module = self.stack[-1] if self.stack else ("", None)
            is_leaf = module is not None and next(module.children(), None) is None
            # An activation module is named by its class (ReLU6 computes hardtanh; timm wraps GELU in its own).
            label = type(module).__name__ if is_leaf and name != "relu" else OTHER_ACTIVATIONS.get(name, "ReLU")
            self.calls.append((label, where, isinstance(module, nn.ReLU)))
        return func(*args, **(kwargs or {}))


def guided_backprop_obstacle(net: nn.Module, resolution: int) -> str | None:
    """Why guided backprop would not be faithful on ``net`` (None when it would): an activation other than ReLU,
    a ReLU applied as a function (no module to swap), or no ReLU at all, seen in one forward of a blank image."""
    recorder = _ActivationCalls(net)
    handles = []
    for module in net.modules():
        handles.append(module.register_forward_pre_hook(recorder.enter))
        handles.append(module.register_forward_hook(recorder.leave))
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    try:
        with torch.no_grad(), recorder:
            net(torch.zeros((1, 3, resolution, resolution), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    for label, where, in_relu_module in recorder.calls:
        if label != "ReLU":
            return f"uses {label}" + (f" ({where})" if where else "")
        if not in_relu_module:
            return "applies ReLU as a function, not an nn.ReLU module" + (f" (in {where})" if where else "")
    if not recorder.calls:
        return "has no ReLU activations"
    return None
