"""Model families, each split into a feature extractor and a classification head.

Phase 2 of a query re-fits only the head, so every model qkt builds exposes
``model.features`` and ``model.head`` and computes ``head(features(x))``. Models
named by a package (``torchvision:resnet18``, ``timm:resnet18``) or by a user's
factory (``module.path:function``) keep their own layout: their head is found
by :func:`find_head`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence

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


def resnet18(input_shape: Sequence[int], num_classes: int, width: int = 64) -> FeaturesHead:
    """ResNet-18 (He et al. 2016) laid out as torchvision's ``resnet18``: a strided 7×7 stem and a max-pool, then
    2-2-2-2 basic blocks of 64-512 channels.

    The same network as ``torchvision:resnet18`` (11.7 M weights with 1,000 classes), for machines where
    torchvision cannot be installed, split into ``features`` and ``head`` like qkt's other models.
    """
    stem = [nn.Conv2d(input_shape[0], width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    stages: list[nn.Module] = [nn.Sequential(*stem)]
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        stages.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
        cin = cout
    stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    return FeaturesHead(nn.Sequential(*stages), nn.Linear(cin, num_classes))


ARCHITECTURES = {"mlp": mlp, "cnn": cnn, "resnet": resnet, "resnet18": resnet18}


def _import(module: str, why: str):
    """Import ``module``; the current folder is searched last, as ``python -m`` would, so a factory beside the config is found."""
    path = sys.path[:]
    sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module)
    except Exception as exc:  # a broken install raises anything (torchvision: RuntimeError on a mismatched torch)
        raise QKTError(f"{why}: cannot import {module} ({type(exc).__name__}: {exc})") from None
    finally:
        sys.path[:] = path


def _factory(arch: str, input_shape: Sequence[int]) -> Callable[[int], nn.Module]:
    """A function of ``num_classes`` building the model ``arch`` names (``package:name`` or ``module.path:function``)."""
    source, _, name = arch.partition(":")
    if not source or not name:
        raise QKTError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}, or name one as "
                       "torchvision:<name>, timm:<name> or module.path:function")
    if source == "torchvision":
        models = _import("torchvision.models", f"{arch} needs torchvision (pip install 'qkt[torchvision]')")
        if name not in models.list_models(module=models):
            raise QKTError(f"torchvision has no classification model '{name}' (torchvision.models.list_models() lists them)")
        return lambda num_classes: models.get_model(name, weights=None, num_classes=num_classes)
    if source == "timm":
        timm = _import("timm", f"{arch} needs timm (pip install 'qkt[timm]')")
        if not timm.is_model(name):
            raise QKTError(f"timm has no model '{name}' (timm.list_models() lists them)")
        return lambda num_classes: timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
    function = getattr(_import(source, f"model factory {arch}"), name, None)
    if not callable(function):
        raise QKTError(f"model factory {arch}: module {source} has no function '{name}'")
    # A factory is called as torchvision's are, by num_classes; one that declares input_shape also gets (C, H, W) or (D,).
    takes_shape = "input_shape" in inspect.signature(function).parameters
    return lambda num_classes: function(num_classes=num_classes, **({"input_shape": tuple(input_shape)} if takes_shape else {}))


def build_model(arch: str, input_shape: Sequence[int], num_classes: int, **options) -> nn.Module:
    """Build the model ``arch`` names for the given input and classes.

    Parameters
    ----------
    arch:
        A built-in architecture (``mlp``, ``cnn``, ``resnet``, ``resnet18``), a package's
        model as ``torchvision:<name>`` or ``timm:<name>`` (built untrained with
        ``num_classes``), or a user's factory as ``module.path:function``, called with
        ``num_classes=`` (and ``input_shape=`` if it takes that argument).
    input_shape:
        One input's shape, ``(C, H, W)`` or ``(D,)``.
    num_classes:
        Outputs of the classification head.
    options:
        Keyword arguments of a built-in architecture (e.g. ``width``).
    """
    if arch in ARCHITECTURES:
        if arch != "mlp" and len(input_shape) != 3:
            raise QKTError(f"'{arch}' needs image inputs (C, H, W); this data set has feature vectors {tuple(input_shape)}: use 'mlp'")
        return ARCHITECTURES[arch](input_shape, num_classes, **options)
    if options:
        raise QKTError(f"options {sorted(options)} are for qkt's own architectures; {arch} takes none")
    model = _factory(arch, input_shape)(num_classes)
    if not isinstance(model, nn.Module):
        raise QKTError(f"{arch} returned a {type(model).__name__}, not a torch.nn.Module")
    _check_outputs(model, arch, input_shape, num_classes)
    return model


@torch.no_grad()
def _check_outputs(model: nn.Module, arch: str, input_shape: Sequence[int], num_classes: int) -> None:
    """Fail at once, naming the model, if it cannot map this data set's inputs to ``num_classes`` logits."""
    training = model.training
    model.eval()  # evaluation mode: BatchNorm statistics stay as built
    try:
        out = model(torch.zeros(2, *input_shape))
    except Exception as exc:  # whatever a user's model raises, the fault is the pairing of model and data
        raise QKTError(f"{arch} cannot take this data set's inputs of shape {tuple(input_shape)} "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise QKTError(f"{arch} maps 2 inputs to {shape}, not to (2, {num_classes}) logits of this data set's classes")


HEAD_NAMES = ("head", "fc", "classifier")


def _last_linear(module: nn.Module) -> nn.Linear | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def find_head(model: nn.Module, head: str | None = None) -> nn.Linear:
    """The classification head of ``model``.

    Looked up by ``head`` (a submodule name) if given; else timm's
    ``model.get_classifier()``; else the first of ``model.head`` (qkt's models),
    ``model.fc`` (torchvision's ResNets) and ``model.classifier`` (torchvision's
    VGG, MobileNet, DenseNet…), or the last ``nn.Linear`` inside it when it is a
    block; else the model's last ``nn.Linear``. Raises if none is found.
    """
    if head is not None:
        try:
            module = model.get_submodule(head)
        except AttributeError:
            raise QKTError(f"the model has no submodule '{head}' to use as classification head") from None
    else:
        candidates = [model.get_classifier()] if callable(getattr(model, "get_classifier", None)) else []
        candidates += [getattr(model, name) for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)]
        found = (_last_linear(m) for m in [*candidates, model])
        module = next((m for m in found if m is not None), None)
        if module is None:
            raise QKTError("cannot find the model's classification head: give its submodule name (head=...)")
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
