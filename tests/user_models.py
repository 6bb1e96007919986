"""A user's own model factories, named in configs as ``user_models:<function>`` (tests/test_models_by_name.py)."""

from __future__ import annotations

from torch import nn


class SmallResNetLike(nn.Module):
    """Laid out as torchvision's ResNets: a body, then a global pool and a linear head named ``fc``."""

    def __init__(self, num_classes: int, channels: int = 1):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)))


def resnet_like(num_classes: int = 1000, **kwargs) -> SmallResNetLike:
    """Called as torchvision's resnet18 is: by ``num_classes``."""
    return SmallResNetLike(num_classes, **kwargs)


def sized(num_classes: int, input_shape: tuple[int, ...]) -> SmallResNetLike:
    """A factory that declares ``input_shape`` is also given the data's (C, H, W)."""
    return SmallResNetLike(num_classes, channels=input_shape[0])


def three_classes(num_classes: int) -> SmallResNetLike:
    """A factory that ignores num_classes."""
    return SmallResNetLike(3)


def not_a_model(num_classes: int) -> str:
    return "a string"
