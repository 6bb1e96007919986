"""Model families, each split into a feature extractor and a classification head.

Phase 2 of a query re-fits only the head, so every model qkt builds exposes
``model.features`` and ``model.head`` and computes ``head(features(x))``. A user's
own model may instead name its head (see :func:`find_head`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import QKTError


class FeaturesHead(nn.Module):
    """``head(features(x))``: the shape every built-in model shares."""

    def __init__(self, features: nn.Sequential, head: nn.Linear):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128)) -> FeaturesHead:
    """A multilayer perceptron; BatchNorm lets noise probes and inversion read its data statistics."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for h in hidden:
        layers.append(nn.Sequential(nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()))
        width = h
    return FeaturesHead(nn.Sequential(*layers), nn.Linear(width, num_classes))


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def cnn(input_shape: Sequence[int], num_classes: int, width: int = 32) -> FeaturesHead:
    """A small three-block CNN for 8- to 32-pixel images."""
    channels, size = input_shape[0], input_shape[-1]
    blocks = []
    cin = channels
    for i, cout in enumerate((width, 2 * width, 4 * width)):
        pool = [nn.MaxPool2d(2)] if size >= 4 and i < 2 else []
        size //= 2 if pool else 1
        blocks.append(nn.Sequential(*_conv_bn(cin, cout), *pool))
        cin = cout
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    return FeaturesHead(nn.Sequential(*blocks), nn.Linear(cin, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet(input_shape: Sequence[int], num_classes: int, depth: int = 8, width: int = 16) -> FeaturesHead:
    """A CIFAR-style ResNet (He et al. 2016): depth = 6n + 2, three stages of n basic blocks."""
    if (depth - 2) % 6:
        raise QKTError(f"resnet depth must be 6n+2 (8, 14, 20, …), got {depth}")
    n = (depth - 2) // 6
    stages: list[nn.Module] = [nn.Sequential(*_conv_bn(input_shape[0], width))]
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width)):
        stages.append(nn.Sequential(*(BasicBlock(cin if b == 0 else cout, cout, 2 if (b == 0 and i > 0) else 1) for b in range(n))))
        cin = cout
    stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    return FeaturesHead(nn.Sequential(*stages), nn.Linear(cin, num_classes))


ARCHITECTURES = {"mlp": mlp, "cnn": cnn, "resnet": resnet}


def build_model(arch: str, input_shape: Sequence[int], num_classes: int, **options) -> FeaturesHead:
    """Build a registry architecture (``mlp``, ``cnn``, ``resnet``) for the given input and classes."""
    if arch not in ARCHITECTURES:
        raise QKTError(f"unknown architecture '{arch}'; choose one of: {', '.join(ARCHITECTURES)}")
    if arch != "mlp" and len(input_shape) != 3:
        raise QKTError(f"'{arch}' needs image inputs (C, H, W); this data set has feature vectors {tuple(input_shape)}: use 'mlp'")
    return ARCHITECTURES[arch](input_shape, num_classes, **options)


def find_head(model: nn.Module, head: str | None = None) -> nn.Linear:
    """The classification head of ``model``.

    Looked up by ``head`` (a submodule name) if given, else ``model.head``, else the
    last ``nn.Linear`` of the model; raises if the model has none.
    """
    if head is not None:
        try:
            module = model.get_submodule(head)
        except AttributeError:
            raise QKTError(f"the model has no submodule '{head}' to use as classification head") from None
    elif isinstance(getattr(model, "head", None), nn.Module):
        module = model.head
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise QKTError("cannot find the model's classification head: give its submodule name (head=...)")
        module = linears[-1]
    if not isinstance(module, nn.Linear):
        raise QKTError(f"the classification head must be an nn.Linear, got {type(module).__name__}")
    return module


def block_indices(model: nn.Module) -> list[int]:
    """Where in ``model.features`` (an ``nn.Sequential``) the blocks with parameters sit; empty if it has none."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return []
    return [i for i, block in enumerate(features) if any(True for _ in block.parameters())]


def last_block(model: nn.Module) -> nn.Module | None:
    """The last parameterised block of ``model.features``, which QKT Light trains besides the head."""
    blocks = block_indices(model)
    return model.features[blocks[-1]] if blocks else None


def num_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights and buffers as sent on the wire."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
