"""The classifier a job names (a torchvision builder, ``timm:<name>``, ``package.module:callable``) or a caller
hands over as an ``nn.Module``: its weights, preprocessing and class names."""
