"""Models named in configs: torchvision:<name>, timm:<name> and a user's module.path:function; their heads are found."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

from qkt.cli import main
from qkt.config import parse_config
from qkt.errors import ConfigError, QKTError
from qkt.models import build_model, find_head


def _importable(name: str) -> str | None:
    """Why ``name`` cannot be imported, or None if it can."""
    try:
        __import__(name)
    except Exception as exc:  # torchvision beside a mismatched torch raises RuntimeError, not ImportError
        return f"{name} does not import here ({type(exc).__name__}: {exc})"
    return None


def test_a_factory_named_by_module_path_is_built_and_its_fc_head_found():
    model = build_model("user_models:resnet_like", (1, 8, 8), 5)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 5)
    assert find_head(model) is model.fc


def test_a_factory_declaring_input_shape_gets_the_data_shape():
    model = build_model("user_models:sized", (3, 8, 8), 4)
    assert model.conv[0].in_channels == 3


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in for torchvision that mimics its model registry: resnet18(weights=None, num_classes=...) with an fc head."""
    calls = []
    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["resnet18"]

    def get_model(name, **kwargs):
        calls.append((name, kwargs))
        from user_models import SmallResNetLike

        return SmallResNetLike(kwargs["num_classes"], channels=3)

    models.get_model = get_model
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_torchvision_models_are_built_untrained_with_the_data_sets_classes(fake_torchvision):
    model = build_model("torchvision:resnet18", (3, 16, 16), 7)
    assert fake_torchvision == [("resnet18", {"weights": None, "num_classes": 7})]
    assert find_head(model) is model.fc and find_head(model).out_features == 7
    with pytest.raises(QKTError, match="torchvision has no classification model 'resnet99'"):
        build_model("torchvision:resnet99", (3, 16, 16), 7)
    # torchvision's ResNets take 3 channels: grey images are refused at once, naming the model and the shape.
    with pytest.raises(QKTError, match=r"torchvision:resnet18 cannot take this data set's inputs of shape \(1, 8, 8\)"):
        build_model("torchvision:resnet18", (1, 8, 8), 7)


def test_a_missing_package_or_factory_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(QKTError, match=r"timm:resnet18 needs timm \(pip install 'qkt\[timm\]'\)"):
        build_model("timm:resnet18", (3, 8, 8), 3)
    with pytest.raises(QKTError, match="cannot import no_such_module"):
        build_model("no_such_module:build", (3, 8, 8), 3)
    with pytest.raises(QKTError, match="module user_models has no function 'nothing'"):
        build_model("user_models:nothing", (3, 8, 8), 3)
    with pytest.raises(QKTError, match="returned a str, not a torch.nn.Module"):
        build_model("user_models:not_a_model", (3, 8, 8), 3)
    with pytest.raises(QKTError, match=r"maps 2 inputs to \(2, 3\), not to \(2, 10\)"):
        build_model("user_models:three_classes", (1, 8, 8), 10)


def test_config_accepts_named_models_and_refuses_other_names():
    config = parse_config({"training": {"arch": "user_models:resnet_like", "teacher_archs": ["torchvision:resnet18", "cnn"]}})
    assert config.training.arch == "user_models:resnet_like"
    for bad in ("resnet50", "a:b:c", "torchvision:"):
        with pytest.raises(ConfigError, match="torchvision:<name>, timm:<name> or module.path:function"):
            parse_config({"training": {"arch": bad}})


class TimmLike(nn.Module):
    """timm's layout: the head inside a block, returned by get_classifier()."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(6, 3))
        self.aux = nn.Linear(3, 3)  # a last nn.Linear that is not the head

    def get_classifier(self):
        return self.head[1]

    def forward(self, x):
        return self.head(self.body(x))


class VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Linear(4, 6)
        self.classifier = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


def test_find_head_follows_each_librarys_naming():
    timm_like, vgg = TimmLike(), VGGLike()
    assert find_head(timm_like) is timm_like.head[1]
    assert find_head(vgg) is vgg.classifier[2]  # the last linear layer of a classifier block
    assert find_head(vgg, "classifier.0") is vgg.classifier[0]
    with pytest.raises(QKTError, match="must be an nn.Linear, got ReLU"):
        find_head(vgg, "classifier.1")


def test_qkt_run_with_a_users_factory(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("methods: [local, qkt]\npartition: {num_parties: 4, alpha: 0.2}\n"
                      "training: {arch: 'user_models:resnet_like', epochs: 2}\n"
                      "query: {phase1_epochs: 1, phase2_epochs: 2, probe: {num_samples: 64, steps: 5},"
                      " inversion: {samples_per_class: 16, steps: 5}}\n")
    assert main(["run", "--config", str(config), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(summary["methods"]) == {"local", "qkt"}
    assert "failed" not in summary["methods"]["qkt"].get("details", {})


@pytest.mark.skipif(_importable("torchvision") is not None, reason=str(_importable("torchvision")))
def test_real_torchvision_resnet18_has_qkts_resnet18_layout():
    model = build_model("torchvision:resnet18", (3, 32, 32), 10)
    assert find_head(model) is model.fc
    ours = build_model("resnet18", (3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ours.parameters())


@pytest.mark.skipif(_importable("timm") is not None, reason=str(_importable("timm")))
def test_real_timm_model_and_its_classifier():
    model = build_model("timm:resnet18", (1, 32, 32), 10)
    assert find_head(model) is model.get_classifier() and find_head(model).out_features == 10
