"""Exact incremental inference for Occlusion: each occluded copy recomputes only what its window can change.

An occluded copy differs from its clean image inside one window. Through a convolution, a pooling or an
elementwise map, the outputs that can differ are those whose receptive field meets the changed inputs: a rectangle
that grows by the kernel's halo and shrinks with the stride. So the clean image runs once, every layer's clean output
is kept, and for a chunk of windows each layer computes only a fixed-size rectangle per copy, from an input crop read
out of the clean tensor with the copy's changed rectangle laid over it. Nothing is approximated: every value read is
either a clean value that the window provably cannot reach or a recomputed one, so the maps equal the full-forward
engine's up to float rounding (the crops run through different kernel shapes).

The network is lowered into a small graph of steps (:class:`Window` for convolutions and max-pools,
:class:`Elementwise` for BatchNorm in eval mode and ReLU, :class:`Add` for residual sums) by walking the known
structure of torchvision ResNets, VGG-style ``features → avgpool → classifier`` nets and plain ``nn.Sequential``s.
The lowered part is cut into *stages* (a residual block, a layer of a Sequential); the first stage it cannot lower,
and everything after it, runs as an ordinary forward of the full occluded activations (the *tail*: global pooling
and classifier at the latest). Where the changed rectangles have grown to cover most of a tensor, ending the
incremental part earlier is cheaper; the cut is chosen from the layers' FLOPs (:attr:`Plan.flop_ratio`).

Rows and columns are independent (windows, kernels and rectangles are products of two intervals), so all geometry
is computed per axis, once per image size and window grid, and a copy's rectangle is its row interval × column
interval.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .guided_backprop import SwitchableReLU

#: extra cost per incrementally computed FLOP (reading crops, writing rectangles) against a full forward's FLOP;
#: it only moves where the incremental part ends, never what is computed
GATHER_OVERHEAD = 0.15


class Unsupported(Exception):
    """A module the lowering does not know: the stage holding it, and all after it, run as a full forward."""


# ------------------------------------------------------------------------------------------------------ the graph


@dataclasses.dataclass(frozen=True)
class Window:
    """A sliding-window op (convolution or max-pool): reads a crop with its halo, ``crop_op`` computes on it."""

    src: int
    dst: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float  # what the op's padding holds: 0 for a convolution, −inf for a max-pool
    full_op: Callable[[torch.Tensor], torch.Tensor]  # on a whole tensor, its own padding
    crop_op: Callable[[torch.Tensor], torch.Tensor]  # on a crop that already holds the halo and padding
    flops_per_output: int  # multiply-adds × 2 per output position (all channels); 0 for a pool

    def reach(self, axis: int) -> int:
        """The input span of one output along an axis: the dilated kernel."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1


@dataclasses.dataclass(frozen=True)
class Elementwise:
    src: int
    dst: int
    op: Callable[[torch.Tensor], torch.Tensor]
    op_: Callable[[torch.Tensor], torch.Tensor] | None = None  # in place, for rectangles nothing reads again


@dataclasses.dataclass(frozen=True)
class Add:
    a: int
    b: int
    dst: int


Step = Window | Elementwise | Add


@dataclasses.dataclass
class Stage:
    """A piece of the network that is either lowered whole or run as part of the tail."""

    module: nn.Module  # what a full forward of this stage runs
    steps: list[Step] | None  # None: not lowered (an unknown module inside)
    out: int | None  # the node holding its output, when lowered


@dataclasses.dataclass
class Graph:
    """The network as stages over numbered nodes (node 0 is the input); shapes are (C, H, W) of one image."""

    stages: list[Stage]
    shapes: dict[int, tuple[int, int, int]]


class _Lowering:
    """Turns modules into steps, numbering nodes and tracking their shapes."""

    def __init__(self, input_shape: tuple[int, int, int]):
        self.shapes: dict[int, tuple[int, int, int]] = {0: input_shape}
        self.steps: list[Step] = []

    def node(self, shape: tuple[int, int, int]) -> int:
        index = len(self.shapes)
        self.shapes[index] = shape
        return index

    def module(self, module: nn.Module, src: int) -> int:
        if isinstance(module, nn.Sequential):
            for child in module:
                src = self.module(child, src)
            return src
        if isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and not module.training):
            return src
        if isinstance(module, nn.Conv2d):
            return self.conv(module, src)
        if isinstance(module, nn.MaxPool2d):
            return self.max_pool(module, src)
        if isinstance(module, nn.BatchNorm2d):
            return self.batch_norm(module, src)
        if type(module) in (nn.ReLU, SwitchableReLU):
            return self.elementwise(torch.relu, src, torch.relu_)
        if _runs_as(module, torchvision.models.resnet.BasicBlock):
            return self.residual(module, src, ("conv1", "bn1", "relu", "conv2", "bn2"))
        if _runs_as(module, torchvision.models.resnet.Bottleneck):
            return self.residual(module, src, ("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"))
        raise Unsupported(type(module).__name__)

    def conv(self, conv: nn.Conv2d, src: int) -> int:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise Unsupported("Conv2d padding")
        channels, height, width = self.shapes[src]
        if channels != conv.in_channels:
            raise Unsupported("Conv2d channels")
        kernel, stride, padding, dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        dst = self.node((conv.out_channels, *_out_size((height, width), kernel, stride, padding, dilation)))
        macs = conv.in_channels // conv.groups * kernel[0] * kernel[1] * conv.out_channels
        self.steps.append(Window(
            src, dst, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), 0.0,
            full_op=lambda x: F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation, conv.groups),
            crop_op=lambda x: F.conv2d(x, conv.weight, conv.bias, stride, 0, dilation, conv.groups),
            flops_per_output=2 * macs,
        ))
        return dst

    def max_pool(self, pool: nn.MaxPool2d, src: int) -> int:
        if pool.ceil_mode or pool.return_indices:
            raise Unsupported("MaxPool2d ceil_mode / return_indices")
        kernel, stride, padding, dilation = (_pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size,
                                                               pool.padding, pool.dilation))
        channels, height, width = self.shapes[src]
        dst = self.node((channels, *_out_size((height, width), kernel, stride, padding, dilation)))
        self.steps.append(Window(
            src, dst, kernel, stride, padding, dilation, float("-inf"),
            full_op=lambda x: F.max_pool2d(x, kernel, stride, padding, dilation),
            crop_op=lambda x: F.max_pool2d(x, kernel, stride, 0, dilation),
            flops_per_output=0,
        ))
        return dst

    def batch_norm(self, bn: nn.BatchNorm2d, src: int) -> int:
        if bn.training or not bn.track_running_stats:
            raise Unsupported("BatchNorm2d in training mode")  # batch statistics: not local to a window
        return self.elementwise(
            lambda x: F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps), src)

    def elementwise(self, op: Callable[[torch.Tensor], torch.Tensor], src: int, op_=None) -> int:
        dst = self.node(self.shapes[src])
        self.steps.append(Elementwise(src, dst, op, op_))
        return dst

    def residual(self, block: nn.Module, src: int, main: Sequence[str]) -> int:
        """torchvision's BasicBlock / Bottleneck: the main branch, the (downsampled) identity, sum, ReLU."""
        out = src
        for name in main:
            out = self.module(getattr(block, name), out)
        identity = src if block.downsample is None else self.module(block.downsample, src)
        if self.shapes[identity] != self.shapes[out]:
            raise Unsupported("residual shapes")
        summed = self.node(self.shapes[out])
        self.steps.append(Add(out, identity, summed))
        return self.module(block.relu, summed)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _out_size(size, kernel, stride, padding, dilation) -> tuple[int, int]:
    return tuple((size[a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1 for a in (0, 1))


def _runs_as(module: nn.Module, cls: type) -> bool:
    """Whether ``module`` is ``cls`` or a subclass that keeps its forward (so its wiring is the known one)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


def network_stages(net: nn.Module) -> list[nn.Module] | None:
    """The modules ``net``'s forward applies one after another, or None when its forward is not a known one."""
    from torchvision.models import AlexNet, ResNet, VGG

    if _runs_as(net, ResNet):
        blocks = [block for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for block in layer]
        return [net.conv1, net.bn1, net.relu, net.maxpool, *blocks, net.avgpool, _Flatten(), net.fc]
    if _runs_as(net, VGG) or _runs_as(net, AlexNet):
        return [*net.features, net.avgpool, _Flatten(), *net.classifier]
    if type(net) is nn.Sequential:
        return list(net)
    return None


def lower(net: nn.Module, input_shape: tuple[int, int, int]) -> Graph | None:
    """``net`` as a :class:`Graph` for inputs of ``input_shape``; None when not even its first stage lowers."""
    modules = network_stages(net)
    if modules is None:
        return None
    lowering = _Lowering(input_shape)
    stages: list[Stage] = []
    current: int | None = 0
    for module in modules:
        if current is not None:
            before_steps, before_shapes = len(lowering.steps), dict(lowering.shapes)
            try:
                out = lowering.module(module, current)
                steps = lowering.steps[before_steps:]
                if out == current or not steps:  # identity-like: keep the stage, nothing to compute
                    stages.append(Stage(module, [], current))
                    continue
                stages.append(Stage(module, steps, out))
                current = out
                continue
            except Unsupported:
                del lowering.steps[before_steps:]
                lowering.shapes = before_shapes
                current = None
        stages.append(Stage(module, None, None))
    if not stages or stages[0].steps is None:
        return None
    return Graph(stages, lowering.shapes)


# ------------------------------------------------------------------------------------------------------ geometry


@dataclasses.dataclass(frozen=True)
class Extent:
    """Along one axis of one node: each window's changed interval [start, end) and the fixed-length rectangle
    [top, top + length) that holds it, the same length for every window so that copies batch together."""

    start: torch.Tensor  # (n_windows,) int64
    end: torch.Tensor
    top: torch.Tensor
    length: int
    size: int  # the node's size along the axis


def _fix(start: torch.Tensor, end: torch.Tensor, size: int) -> Extent:
    """A fixed length for all windows (the longest interval), each rectangle shifted to stay inside the tensor."""
    length = int(max(1, int((end - start).max())))
    length = min(length, size)
    top = torch.minimum(start, torch.tensor(size - length)).clamp(min=0)
    return Extent(start, end, top, length, size)


def window_extent(size: int, window: int, stride: int) -> Extent:
    """The input axis: Captum's window starts (0, stride, …, the last clipped at the border)."""
    n_windows = -(-(size - window) // stride) + 1
    start = torch.arange(n_windows) * stride
    return _fix(start, (start + window).clamp(max=size), size)


def window_op_extent(extent: Extent, step: Window, axis: int, out_size: int) -> Extent:
    """The outputs whose input span [o·s − p, o·s − p + reach) meets the changed interval [a, b):
    o ≥ ceil((a + p − reach + 1) / s) and o ≤ floor((b − 1 + p) / s)."""
    stride, padding, reach = step.stride[axis], step.padding[axis], step.reach(axis)
    start = torch.div(extent.start + padding - reach + stride, stride, rounding_mode="floor").clamp(0, out_size)
    end = (torch.div(extent.end - 1 + padding, stride, rounding_mode="floor") + 1).clamp(max=out_size)
    # A stride wider than the kernel can step over the whole interval: then nothing changes (an empty interval).
    return _fix(start, torch.maximum(end, start), out_size)


def union_extent(a: Extent, b: Extent) -> Extent:
    return _fix(torch.minimum(a.start, b.start), torch.maximum(a.end, b.end), a.size)


@dataclasses.dataclass
class Plan:
    """The incremental part of a graph for one image size and window grid, and its predicted saving."""

    graph: Graph
    n_lowered: int  # stages run incrementally; the rest is the tail
    rows: dict[int, Extent]
    cols: dict[int, Extent]
    tail: nn.Module
    tail_input: int
    flop_ratio: float  # (incremental + tail FLOPs) ÷ full-forward FLOPs, per occluded copy
    keep: set[int]  # nodes whose clean values or rectangles are read later

    @property
    def steps(self) -> list[Step]:
        return [step for stage in self.graph.stages[: self.n_lowered] for step in stage.steps]


def make_plan(net: nn.Module, graph: Graph, height: int, width: int, window: int, stride: int) -> Plan:
    """Propagates the windows' intervals through the lowered stages and ends the incremental part where the rest
    costs least (FLOPs, with :data:`GATHER_OVERHEAD` on the incremental ones)."""
    rows, cols = {0: window_extent(height, window, stride)}, {0: window_extent(width, window, stride)}
    lowered_full, lowered_incremental = [0.0], [0.0]  # cumulative over the lowered stages
    for stage in graph.stages:
        if stage.steps is None:
            break
        full, incremental = 0.0, 0.0
        for step in stage.steps:
            _propagate(step, graph.shapes, rows, cols)
            if isinstance(step, Window):
                _, out_h, out_w = graph.shapes[step.dst]
                full += step.flops_per_output * out_h * out_w
                incremental += step.flops_per_output * rows[step.dst].length * cols[step.dst].length
        lowered_full.append(lowered_full[-1] + full)
        lowered_incremental.append(lowered_incremental[-1] + incremental)

    total = network_flops(net, graph.shapes[0])
    lowered_full_total = lowered_full[-1]
    if total < lowered_full_total:  # FLOPs the hooks did not see (a functional call): count the lowered part
        total = lowered_full_total
    costs = [(1 + GATHER_OVERHEAD) * lowered_incremental[n] + (total - lowered_full[n]) for n in
             range(1, len(lowered_full))]
    n_lowered = 1 + min(range(len(costs)), key=costs.__getitem__)
    ratio = (lowered_incremental[n_lowered] + total - lowered_full[n_lowered]) / max(total, 1.0)
    tail_input = graph.stages[n_lowered - 1].out
    tail = nn.Sequential(*[stage.module for stage in graph.stages[n_lowered:]])
    plan = Plan(graph, n_lowered, rows, cols, tail, tail_input, ratio, set())
    plan.keep = _gathered_nodes(plan) | {tail_input}
    return plan


def _propagate(step: Step, shapes, rows: dict[int, Extent], cols: dict[int, Extent]) -> None:
    if isinstance(step, Window):
        _, out_h, out_w = shapes[step.dst]
        rows[step.dst] = window_op_extent(rows[step.src], step, 0, out_h)
        cols[step.dst] = window_op_extent(cols[step.src], step, 1, out_w)
    elif isinstance(step, Elementwise):
        rows[step.dst], cols[step.dst] = rows[step.src], cols[step.src]
    else:
        rows[step.dst] = union_extent(rows[step.a], rows[step.b])
        cols[step.dst] = union_extent(cols[step.a], cols[step.b])


def same_rect(plan: Plan, node: int, other: int) -> bool:
    """Whether two nodes' rectangles coincide for every window (a sum then needs no gather)."""
    return all(a[node].length == a[other].length and bool(torch.equal(a[node].top, a[other].top))
               for a in (plan.rows, plan.cols))


def _gathered_nodes(plan: Plan) -> set[int]:
    """Nodes that some step reads through crops: their clean values and rectangles are laid out for gathering."""
    read = set()
    for step in plan.steps:
        if isinstance(step, Window):
            read.add(step.src)
        elif isinstance(step, Add):
            read.update(node for node in (step.a, step.b) if not same_rect(plan, node, step.dst))
    return read


def network_flops(net: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """FLOPs (2 × multiply-adds) of the Conv2d and Linear modules in one forward of one image."""
    total = [0.0]

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total[0] += 2.0 * output[0].numel() * (module.in_channels // module.groups) * kernel
        else:
            total[0] += 2.0 * module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    parameter = next(net.parameters())
    try:
        with torch.inference_mode():
            net(torch.zeros((1, *input_shape), dtype=parameter.dtype, device=parameter.device))
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


# ------------------------------------------------------------------------------------------------------ running


class _Layout:
    """One node's values for a chunk, flat and channels-last so a crop is one ``index_select`` of C-vectors:
    the clean images' positions, then the chunk's rectangles, then two padding vectors (0 and −inf)."""

    def __init__(self, clean: torch.Tensor, rect_numel: int, max_copies: int):
        images, channels, height, width = clean.shape
        self.height, self.width = height, width
        self.rect_offset = images * height * width
        self.pad_offset = self.rect_offset + max_copies * rect_numel
        self.values = torch.empty((self.pad_offset + 2, channels), dtype=clean.dtype, device=clean.device)
        self.values[: self.rect_offset].view(images, height, width, channels).copy_(clean.permute(0, 2, 3, 1))
        self.values[self.pad_offset] = 0.0
        self.values[self.pad_offset + 1] = float("-inf")

    def put(self, rect: torch.Tensor) -> None:
        """The chunk's rectangles (N, C, h, w)."""
        n, channels, h, w = rect.shape
        target = self.values[self.rect_offset: self.rect_offset + n * h * w].view(n, h, w, channels)
        target.copy_(rect.permute(0, 2, 3, 1))


@dataclasses.dataclass
class _Chunk:
    """Copies (image, window) of one chunk and where each node's rectangle sits for them."""

    image: torch.Tensor  # (N,) index into the group's images
    window_row: torch.Tensor  # (N,) row index of the window grid
    window_col: torch.Tensor

    def tops(self, plan: Plan, node: int) -> tuple[torch.Tensor, torch.Tensor]:
        return plan.rows[node].top[self.window_row], plan.cols[node].top[self.window_col]


def _crop_index(layout: _Layout, chunk: _Chunk, rect: tuple[torch.Tensor, torch.Tensor, int, int] | None,
                top: torch.Tensor, left: torch.Tensor, height: int, width: int, pad_slot: int) -> torch.Tensor:
    """(N·height·width,) rows of ``layout.values`` for each copy's crop [top, top+height) × [left, left+width):
    the copy's rectangle where it lies there, else the clean image, else (outside the tensor) padding."""
    n = top.shape[0]
    device = top.device
    r = top.view(n, 1) + torch.arange(height, device=device).view(1, height)  # (N, h)
    c = left.view(n, 1) + torch.arange(width, device=device).view(1, width)  # (N, w)
    inside = ((r >= 0) & (r < layout.height)).view(n, height, 1) & ((c >= 0) & (c < layout.width)).view(n, 1, width)
    clean = (chunk.image.view(n, 1, 1) * layout.height + r.view(n, height, 1)) * layout.width + c.view(n, 1, width)
    index = torch.where(inside, clean, layout.pad_offset + pad_slot)
    if rect is not None:
        rect_top, rect_left, rect_h, rect_w = rect
        rr, cc = r - rect_top.view(n, 1), c - rect_left.view(n, 1)
        in_rect = ((rr >= 0) & (rr < rect_h)).view(n, height, 1) & ((cc >= 0) & (cc < rect_w)).view(n, 1, width)
        copy = torch.arange(n, device=device).view(n, 1, 1)
        local = layout.rect_offset + (copy * rect_h + rr.view(n, height, 1)) * rect_w + cc.view(n, 1, width)
        index = torch.where(in_rect, local, index)
    return index.view(-1)


def _crop(layout: _Layout, chunk: _Chunk, rect, top, left, height: int, width: int, pad_slot: int = 0):
    index = _crop_index(layout, chunk, rect, top, left, height, width, pad_slot)
    values = layout.values.index_select(0, index)
    channels = layout.values.shape[1]
    # (N, h, w, C) in memory: a channels_last (N, C, h, w), the layout the convolutions prefer
    return values.view(top.shape[0], height, width, channels).permute(0, 3, 1, 2)


class IncrementalRunner:
    """Target scores of occluded copies through a :class:`Plan`, for a group of images sharing one clean pass."""

    def __init__(self, plan: Plan, baseline: float):
        self.plan = plan
        self.baseline = baseline
        self.steps = plan.steps
        self.last_use = _last_use(self.steps, plan.tail_input)
        # Sums whose operand rectangles are the sum's own take the rectangles as they are.
        self.direct = {(node, step.dst) for step in self.steps if isinstance(step, Add) for node in (step.a, step.b)
                       if same_rect(plan, node, step.dst)}

    def clean_pass(self, images: torch.Tensor, max_copies: int) -> tuple[torch.Tensor, dict[int, _Layout]]:
        """Clean logits of the group, and the layouts of the nodes the occluded copies gather from."""
        plan = self.plan
        values = {0: images}
        for index, step in enumerate(self.steps):
            if isinstance(step, Window):
                values[step.dst] = step.full_op(values[step.src])
            elif isinstance(step, Elementwise):
                values[step.dst] = step.op(values[step.src])
            else:
                values[step.dst] = values[step.a] + values[step.b]
            for node in self._released(index):
                if node not in plan.keep and node != 0:  # the input is laid out whatever reads it
                    values.pop(node, None)
        # Laid out before the tail runs: a tail may start with an in-place ReLU on its input.
        layouts = {node: self._layout(node, values.pop(node), max_copies)
                   for node in sorted(plan.keep | {0}) if node != plan.tail_input}
        clean = values[plan.tail_input]
        layouts[plan.tail_input] = self._layout(plan.tail_input, clean, max_copies)
        return plan.tail(clean), layouts

    def _layout(self, node: int, value: torch.Tensor, max_copies: int) -> _Layout:
        return _Layout(value, self.plan.rows[node].length * self.plan.cols[node].length, max_copies)

    def _released(self, index: int) -> list[int]:
        return [node for node, last in self.last_use.items() if last == index]

    def occluded_logits(self, chunk: _Chunk, layouts: dict[int, _Layout]) -> torch.Tensor:
        """Logits of the chunk's occluded copies."""
        plan = self.plan
        rects = {0: self._occluded_input(chunk, layouts[0])}
        if 0 in plan.keep:
            layouts[0].put(rects[0])
        for index, step in enumerate(self.steps):
            rect = self._step(step, index, chunk, rects, layouts)
            rects[step.dst] = rect
            if step.dst in plan.keep:
                layouts[step.dst].put(rect)
            for node in self._released(index):
                rects.pop(node, None)
        node = plan.tail_input
        _, height, width = plan.graph.shapes[node]
        zeros = torch.zeros_like(chunk.image)
        full = _crop(layouts[node], chunk, self._rect(chunk, node), zeros, zeros, height, width)
        return plan.tail(full)

    def _rect(self, chunk: _Chunk, node: int):
        top, left = chunk.tops(self.plan, node)
        return top, left, self.plan.rows[node].length, self.plan.cols[node].length

    def _occluded_input(self, chunk: _Chunk, layout: _Layout) -> torch.Tensor:
        """The input rectangles: the clean image, with the baseline over the window's (clipped) extent."""
        plan = self.plan
        top, left, h, w = self._rect(chunk, 0)
        crop = _crop(layout, chunk, None, top, left, h, w)
        rows, cols = plan.rows[0], plan.cols[0]
        device = top.device
        r = top.view(-1, 1) + torch.arange(h, device=device)
        c = left.view(-1, 1) + torch.arange(w, device=device)
        in_rows = (r >= rows.start[chunk.window_row].view(-1, 1)) & (r < rows.end[chunk.window_row].view(-1, 1))
        in_cols = (c >= cols.start[chunk.window_col].view(-1, 1)) & (c < cols.end[chunk.window_col].view(-1, 1))
        covered = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)
        baseline = torch.tensor(self.baseline, dtype=crop.dtype, device=device)
        return torch.where(covered, baseline, crop).contiguous(memory_format=torch.channels_last)

    def _step(self, step: Step, index: int, chunk: _Chunk, rects, layouts) -> torch.Tensor:
        if isinstance(step, Elementwise):
            # In place when this step is the rectangle's last reader (a laid-out node's values are already copied).
            if step.op_ is not None and self.last_use.get(step.src) == index:
                return step.op_(rects[step.src])
            return step.op(rects[step.src])
        if isinstance(step, Add):
            return self._add(step, index, chunk, rects, layouts)
        plan = self.plan
        out_top, out_left = chunk.tops(plan, step.dst)
        out_h, out_w = plan.rows[step.dst].length, plan.cols[step.dst].length
        # The crop holding every input these outputs read: their span with the stride, plus the kernel's halo.
        crop_h = (out_h - 1) * step.stride[0] + step.reach(0)
        crop_w = (out_w - 1) * step.stride[1] + step.reach(1)
        crop = _crop(layouts[step.src], chunk, self._rect(chunk, step.src),
                     out_top * step.stride[0] - step.padding[0], out_left * step.stride[1] - step.padding[1],
                     crop_h, crop_w, 0 if step.pad_value == 0 else 1)
        return step.crop_op(crop)

    def _add(self, step: Add, index: int, chunk: _Chunk, rects, layouts) -> torch.Tensor:
        """The sum over its rectangles, into an operand no one reads again (a fresh crop, or a released one)."""
        a = self._read(step.a, step.dst, chunk, rects, layouts)
        b = self._read(step.b, step.dst, chunk, rects, layouts)
        for target, other, node in ((a, b, step.a), (b, a, step.b)):
            fresh = (node, step.dst) not in self.direct
            if (fresh or self.last_use.get(node) == index) and step.a != step.b:
                return target.add_(other)
        return a + b

    def _read(self, node: int, target: int, chunk: _Chunk, rects, layouts) -> torch.Tensor:
        """``node``'s values over ``target``'s rectangles."""
        if (node, target) in self.direct:
            return rects[node]
        plan = self.plan
        top, left = chunk.tops(plan, target)
        return _crop(layouts[node], chunk, self._rect(chunk, node), top, left, plan.rows[target].length,
                     plan.cols[target].length)


def _last_use(steps: list[Step], keep_until_end: int) -> dict[int, int]:
    """For each node, the index of the last step reading it (so its rectangles can be freed after)."""
    last: dict[int, int] = {}
    for index, step in enumerate(steps):
        sources = (step.a, step.b) if isinstance(step, Add) else (step.src,)
        for node in sources:
            last[node] = index
    last.pop(keep_until_end, None)
    return last


# ------------------------------------------------------------------------------------------------------ entry point


def incremental_scores(plan: Plan, inputs: torch.Tensor, targets: torch.Tensor, baseline: float,
                       forward_batch: int, on_rows: Callable[[int], None] | None = None) -> torch.Tensor:
    """(B, n_windows + 1): each image's target score under every window (row-major), then unoccluded.

    Images go in groups whose copies fill about one forward batch; each group has one clean pass, whose per-node
    values stay laid out while its chunks of at most ``forward_batch`` copies run. ``on_rows`` hears of every
    finished clean image and occluded copy (no forward of the whole network runs here for a hook to see).
    """
    from .base import chunk_slices, target_outputs

    n_rows, n_cols = plan.rows[0].top.shape[0], plan.cols[0].top.shape[0]
    n_windows = n_rows * n_cols
    runner = IncrementalRunner(plan, baseline)
    device = inputs.device
    plan_to(plan, device)
    scores = torch.empty((inputs.shape[0], n_windows + 1), dtype=inputs.dtype, device=device)
    group_size = max(1, forward_batch // n_windows)
    for group in chunk_slices(inputs.shape[0], group_size):
        images = inputs[group]
        group_targets = targets[group]
        copies = images.shape[0] * n_windows
        max_copies = min(forward_batch, copies)
        clean_logits, layouts = runner.clean_pass(images, max_copies)
        scores[group, -1] = target_outputs(clean_logits, group_targets)
        if on_rows is not None:
            on_rows(images.shape[0])
        occluded = torch.empty(copies, dtype=inputs.dtype, device=device)
        for part in chunk_slices(copies, forward_batch):
            pair = torch.arange(part.start, part.stop, device=device)
            image, window_index = pair // n_windows, pair % n_windows
            chunk = _Chunk(image, window_index // n_cols, window_index % n_cols)
            occluded[part] = target_outputs(runner.occluded_logits(chunk, layouts), group_targets[image])
            if on_rows is not None:
                on_rows(part.stop - part.start)
        scores[group, :-1] = occluded.view(-1, n_windows)
    return scores


def copies_step(plan: Plan, image: torch.Tensor, baseline: float, rows: int) -> Callable[[], None]:
    """A step computing ``rows`` occluded copies of one (1, C, H, W) ``image`` (windows spread over its grid), its
    clean pass done once now: what the dry run times as a copy's cost on this path."""
    n_rows, n_cols = plan.rows[0].top.shape[0], plan.cols[0].top.shape[0]
    runner = IncrementalRunner(plan, baseline)
    plan_to(plan, image.device)
    with torch.inference_mode():
        _, layouts = runner.clean_pass(image, rows)
    windows = torch.arange(rows, device=image.device) * (n_rows * n_cols) // rows
    chunk = _Chunk(torch.zeros_like(windows), windows // n_cols, windows % n_cols)

    def step() -> None:
        with torch.inference_mode():
            runner.occluded_logits(chunk, layouts)

    return step


class ChunkProbe:
    """The first group's clean pass and chunks of its copies, callable apart so that each can be timed."""

    def __init__(self, plan: Plan, inputs: torch.Tensor, baseline: float, forward_batch: int):
        n_rows, n_cols = plan.rows[0].top.shape[0], plan.cols[0].top.shape[0]
        self.n_windows, self.n_cols = n_rows * n_cols, n_cols
        plan_to(plan, inputs.device)
        self.runner = IncrementalRunner(plan, baseline)
        #: the images of the group (as :func:`incremental_scores` groups them) and the copies of one chunk
        self.images = inputs[: max(1, forward_batch // self.n_windows)]
        self.group_images = self.images.shape[0]
        self.copies = min(forward_batch, self.group_images * self.n_windows)
        self.layouts: dict[int, _Layout] | None = None

    def clean(self) -> torch.Tensor:
        """The group's clean pass (its layouts kept for :meth:`chunk`); its clean logits."""
        logits, self.layouts = self.runner.clean_pass(self.images, self.copies)
        return logits

    def chunk(self, copies: int) -> torch.Tensor:
        """Logits of the group's first ``copies`` occluded copies (after :meth:`clean`)."""
        pair = torch.arange(min(copies, self.copies), device=self.images.device)
        image, window_index = pair // self.n_windows, pair % self.n_windows
        return self.runner.occluded_logits(_Chunk(image, window_index // self.n_cols, window_index % self.n_cols),
                                           self.layouts)


def plan_to(plan: Plan, device: torch.device) -> None:
    """Moves the plan's index tensors to the device the images are on (once)."""
    for extents in (plan.rows, plan.cols):
        for node, extent in list(extents.items()):
            if extent.top.device != device:
                extents[node] = Extent(extent.start.to(device), extent.end.to(device), extent.top.to(device),
                                       extent.length, extent.size)
