"""Every architecture exposes features and head; heads are found on users' own models too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qkt.errors import QKTError
from qkt.models import build_model, find_head, last_block


@pytest.mark.parametrize(("arch", "shape"), [("mlp", (1, 8, 8)), ("mlp", (20,)), ("cnn", (1, 8, 8)), ("cnn", (3, 28, 28)), ("resnet", (3, 32, 32)), ("resnet18", (3, 32, 32))])
def test_architectures_map_inputs_to_logits(arch, shape):
    model = build_model(arch, shape, 7)
    assert model(torch.randn(4, *shape)).shape == (4, 7)
    assert torch.equal(model.head(model.features(torch.zeros(2, *shape))), model(torch.zeros(2, *shape)))
    assert last_block(model) is not None


def test_image_architectures_refuse_feature_vectors():
    with pytest.raises(QKTError, match="use 'mlp'"):
        build_model("cnn", (20,), 3)


def test_find_head_on_a_user_model():
    user = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert find_head(user) is user[3]
    assert find_head(user, "1") is user[1]
    with pytest.raises(QKTError, match="no submodule"):
        find_head(user, "classifier")

