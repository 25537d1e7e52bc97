"""Test networks with non-trivial biases: torchvision's random init leaves every bias and BatchNorm statistic trivial."""

from __future__ import annotations

import torch
from torch import nn


def give_biases(net: nn.Module, seed: int) -> None:
    """Random biases and BatchNorm statistics. torchvision's random init leaves them at zero, which makes a net
    positively homogeneous (its gradient is constant along IG's straight path, so a mix-up of steps would go unseen)
    and hides a wrong BatchNorm fold."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
