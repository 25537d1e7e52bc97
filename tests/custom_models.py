"""Model factories that jobs name as ``model.arch: custom_models:<name>`` (tests/ is on sys.path under pytest; a
subprocess needs it on PYTHONPATH)."""

from __future__ import annotations

import sys

from torch import nn

N_CLASSES = 5


def tiny_cnn() -> nn.Module:
    """A small ReLU CNN (conv, BatchNorm, in-place ReLU, max-pool, global pool, linear head) with 5 classes."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, N_CLASSES),
    )


class _FunctionalReLU(nn.Module):
    """ReLUs applied with ``torch.relu`` in ``forward``: no module for guided backprop to act on."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, N_CLASSES)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


def functional_relu_cnn() -> nn.Module:
    return _FunctionalReLU()


#: not callable: ``custom_models:NOT_CALLABLE`` is refused
NOT_CALLABLE = 3


def not_a_module():
    return "a string"


def raises():
    raise RuntimeError("the factory could not find its config")


def exits():
    """A factory that ends the process the polite way: must not end a run with exit 0 and nothing written."""
    sys.exit(0)


def interrupted():
    raise KeyboardInterrupt
