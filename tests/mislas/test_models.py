"""Backbones: shapes, parameter counts, the frozen Places-LT trunk, local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import models as tv_models
from torchvision.models.resnet import Bottleneck

from mislas.errors import UsageError
from mislas.models import ScaledClassifier, TauNormClassifier, build_model, effective_weight


def test_resnet32_shapes_and_size() -> None:
    net = build_model("resnet32", 10, in_channels=1)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("resnet32", 100)(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    params = sum(p.numel() for p in build_model("resnet32", 10).parameters())
    assert 0.45e6 < params < 0.48e6  # He et al.: 0.46 M for ResNet-32 on CIFAR-10


def test_places_model_freezes_trunk_and_trains_one_bottleneck() -> None:
    net = build_model("resnet152_places", 365, load_pretrained=False)
    assert net.trunk is not None
    assert not any(p.requires_grad for p in net.trunk.parameters())
    assert all(p.requires_grad for p in net.body.parameters())
    net.train()
    assert not net.trunk.training and net.body.training  # the trunk's BN never re-estimates
    convs = [m for m in net.body.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(2048, 512), (512, 512), (512, 2048)]
    feats = net.features(torch.zeros(1, 3, 64, 64))
    assert feats.shape == (1, 2048)


def test_pretrained_from_local_file(tmp_path: Path) -> None:
    reference = tv_models.resnet50()
    path = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), path)
    net = build_model("resnet50", 7, pretrained=str(path))
    assert torch.equal(net.body.conv1.weight, reference.conv1.weight)
    assert net.classifier.out_features == 7


def test_pretrained_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        build_model("resnet50", 7, pretrained=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv9.weight": torch.zeros(1)}, bad)
    with pytest.raises(UsageError, match="not a resnet50 state_dict"):
        build_model("resnet50", 7, pretrained=str(bad))
    with pytest.raises(UsageError, match="unknown arch"):
        build_model("vgg16", 7)


def test_heads_effective_weights() -> None:
    linear = torch.nn.Linear(4, 3)
    scaled = ScaledClassifier(linear, train_weight=True, train_scale=True)
    with torch.no_grad():
        scaled.scale.copy_(torch.tensor([1.0, 2.0, 0.5]))
    x = torch.randn(5, 4)
    assert torch.allclose(scaled(x), linear(x) * torch.tensor([1.0, 2.0, 0.5]))
    assert torch.allclose(effective_weight(scaled), linear.weight * torch.tensor([[1.0], [2.0], [0.5]]))
    tau = TauNormClassifier(linear, 1.0)
    assert torch.allclose(effective_weight(tau).norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(TauNormClassifier(linear, 0.0)(x), x @ linear.weight.T, atol=1e-6)


def test_places_model_is_resnet152_deep_and_sized() -> None:
    """The reference's Places backbone: layer4.2 replaced, not a fourth block added (152 layers, not 155)."""
    net = build_model("resnet152_places", 365, load_pretrained=False)
    reference = tv_models.resnet152(num_classes=365)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())
    convs = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Conv2d) and "downsample" not in name]
    assert len(convs) + 1 == 152  # main-path convolutions + the classifier
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.body.named_parameters(prefix="body")} | {"classifier.weight", "classifier.bias"}
    assert trainable and all(n.startswith(("body.0.", "classifier.")) for n in trainable)
    assert net.trunk is not None and len(net.trunk.layer4) == 2


def _fake_resnet152_weights(path: Path, *, drop_layer4_2: bool = False) -> dict[str, torch.Tensor]:
    """A "pretrained" ResNet-152 state dict with known values: float tensor i is filled with 2 + i / 1000."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in tv_models.resnet152().state_dict().items()}
    state = {k: torch.full(shape, 2 + i / 1000, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
             for i, (k, (shape, dtype)) in enumerate(shapes.items())}
    if drop_layer4_2:
        state = {k: v for k, v in state.items() if not k.startswith("layer4.2.")}
    torch.save(state, path)
    return state


@pytest.mark.parametrize("drop_layer4_2", [False, True])
def test_places_trunk_takes_pretrained_up_to_layer4_1(tmp_path: Path, drop_layer4_2: bool) -> None:
    path = tmp_path / "r152.pth"
    state = _fake_resnet152_weights(path, drop_layer4_2=drop_layer4_2)
    torch.manual_seed(0)
    net = build_model("resnet152_places", 9, pretrained=str(path))
    assert net.trunk is not None
    trunk = net.trunk.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith(("fc.", "layer4.2."))}
    assert trunk.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(trunk[k], v), k
    block = net.body[0]
    assert isinstance(block, Bottleneck)
    for name, t in block.state_dict().items():  # every file value is >= 2; a fresh block has none
        if t.is_floating_point():
            assert t.abs().max() < 2, name
    assert torch.equal(block.bn3.weight, torch.ones(2048)) and torch.equal(block.bn3.bias, torch.zeros(2048))
    assert torch.equal(block.bn1.running_mean, torch.zeros(512)) and torch.equal(block.bn1.running_var, torch.ones(512))
    assert block.conv1.weight.std() > 0  # PyTorch's default conv init, not a constant


def test_resnet32_initialisation_is_the_references_kaiming_fan_in() -> None:
    """Weight std √(2 / fan_in) on every conv and on the classifier (reference
    models/resnet_cifar.py ``_weights_init``), told apart from fan_out on the convs whose fan_in
    and fan_out differ (conv1: 27 vs 144; the first 16→32 conv: 144 vs 288) and from PyTorch's
    default Linear init (std 1/(8√3) ≈ 0.072 for 64 inputs) on the classifier."""
    torch.manual_seed(0)
    net = build_model("resnet32", 10, in_channels=3)
    body = net.body
    first_32 = next(m for m in body.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 32)
    for weight, fan_in in ((body.conv1.weight, 27), (first_32.weight, 144), (net.classifier.weight, 64)):
        expected = (2.0 / fan_in) ** 0.5
        assert abs(float(weight.std()) / expected - 1.0) < 0.15, (tuple(weight.shape), float(weight.std()), expected)
