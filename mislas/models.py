"""Backbones and classifier heads, chosen by name from a registry.

A :class:`Network` is ``classifier(body(trunk(x)))``. The trunk is frozen and always in
eval mode (Places-LT's ImageNet-pretrained ResNet-152); the body is what Stage 1 trains
and what Stage 2's shift learning re-estimates BN statistics on; the classifier maps
features to logits and is what Stage 2 retrains. No device placement happens here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models
from torchvision.models.resnet import Bottleneck

from mislas.errors import UsageError
from mislas.safe_load import load_torch_file


class Network(nn.Module):
    """Backbone (optional frozen trunk + trainable body) and a linear classifier."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.body = body
        self.feature_dim = feature_dim
        self.classifier: nn.Module = nn.Linear(feature_dim, num_classes)
        if trunk is not None:
            trunk.requires_grad_(False)

    def train(self, mode: bool = True) -> Network:
        """Set train/eval mode; a frozen trunk stays in eval mode (its BN statistics are fixed)."""
        super().train(mode)
        if self.trunk is not None:
            self.trunk.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features of ``x`` (the frozen trunk without autograd)."""
        if self.trunk is not None:
            with torch.no_grad():
                x = self.trunk(x)
        out: torch.Tensor = self.body(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits of ``x``."""
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits


class ScaledClassifier(nn.Module):
    """Logits = s ⊙ (W x + b): MiSLAS's fine-tuned W + ΔW with a learnable per-class scale s.

    ``train_weight`` and ``train_scale`` pick the variant: MiSLAS both, LWS the scale only.
    """

    def __init__(self, linear: nn.Linear, *, train_weight: bool, train_scale: bool) -> None:
        super().__init__()
        self.linear = linear
        self.scale = nn.Parameter(torch.ones(linear.out_features, device=linear.weight.device))
        self.linear.requires_grad_(train_weight)
        self.scale.requires_grad_(train_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits s ⊙ (W x + b)."""
        logits: torch.Tensor = self.linear(x) * self.scale
        return logits

    def effective_weight(self) -> torch.Tensor:
        """The rows of W scaled by s: the weight that multiplies the features."""
        return self.linear.weight * self.scale[:, None]


class TauNormClassifier(nn.Module):
    """τ-normalised classifier (Kang et al.): w_i / ‖w_i‖^τ, no bias, no training."""

    weight: torch.Tensor

    def __init__(self, linear: nn.Linear, tau: float) -> None:
        super().__init__()
        self.tau = float(tau)
        norms = linear.weight.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.register_buffer("weight", linear.weight.detach() / norms.pow(self.tau))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the τ-normalised weight, without bias."""
        return F.linear(x, self.weight)

    def effective_weight(self) -> torch.Tensor:
        """The τ-normalised weight."""
        return self.weight

    def extra_repr(self) -> str:
        """Show τ in the module's repr."""
        return f"tau={self.tau}"


def effective_weight(classifier: nn.Module) -> torch.Tensor:
    """The weight matrix that multiplies features, scale and τ included (for weight norms)."""
    if isinstance(classifier, nn.Linear):
        return classifier.weight
    weight: torch.Tensor = getattr(classifier, "effective_weight")()  # noqa: B009 (heads without the method fail here)
    return weight


# --- ResNet-32 for 32x32 / 28x28 inputs (He et al. 2016, CIFAR variant) -------------------

class _BasicBlock(nn.Module):
    """CIFAR ResNet block with the parameter-free "option A" shortcut (zero-padded identity)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def init_reference_resnet32(module: nn.Conv2d | nn.Linear) -> None:
    """Initialise a conv or linear layer as the reference ResNet-32 does.

    The reference ResNet-32's initialisation: ``kaiming_normal_`` with its defaults (fan_in,
    gain √2) on every conv and on the classifier's weight; the classifier's bias keeps PyTorch's
    default (dvlab-research/MiSLAS 0fc381e, models/resnet_cifar.py, ``_weights_init``, applied
    to the whole network). Stage 1 from scratch depends on it: conv1's weight std is √(2/27) ≈
    0.27 for 3-channel input, not the fan_out rule's 0.12.
    """
    nn.init.kaiming_normal_(module.weight)


class ResNet32Body(nn.Module):
    """3 stages × 5 blocks, 16/32/64 channels, global average pool: 64-d features."""

    def __init__(self, in_channels: int = 3, blocks_per_stage: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_reference_resnet32(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of ``x`` (the classifier is not part of this body)."""
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


# --- torchvision ResNets -------------------------------------------------------------------

_TV_RESNETS: dict[str, tuple[Callable[..., tv_models.ResNet], Callable[[], object]]] = {
    "resnet50": (tv_models.resnet50, lambda: tv_models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (tv_models.resnet101, lambda: tv_models.ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": (tv_models.resnet152, lambda: tv_models.ResNet152_Weights.IMAGENET1K_V1),
}


def pretrained_problem(arch: str, pretrained: str | None) -> str | None:
    """Say why ``arch`` cannot get its pretrained weights offline, or None.

    Why ``arch`` could not get its pretrained weights without a download (None: it can, or
    it needs none). Checks that a given file exists, or that torchvision's weights are already
    in torch's hub cache; reads and downloads nothing (a study checks this before Ray starts).
    """
    source = "torchvision" if arch == "resnet152_places" and pretrained is None else pretrained
    if source is None:
        return None
    if source != "torchvision":
        return None if Path(source).is_file() else f"stage1.pretrained: no such file {source}"
    weights = _TV_RESNETS["resnet152" if arch == "resnet152_places" else arch][1]()
    url = str(getattr(weights, "url", ""))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return None
    return (f"{arch} needs torchvision's ImageNet weights, which are not in torch's hub cache ({cached}) and may "
            f"not be downloaded here; put the file there, or pass --set stage1.pretrained=PATH")


def _load_pretrained(arch: str, model: nn.Module, pretrained: str, *, unused: tuple[str, ...] = ("fc.",)) -> None:
    """Weights from a local file, or torchvision's weights API ("torchvision", needs network).

    Keys under the ``unused`` prefixes may be absent or extra: the caller discards them.
    """
    if pretrained == "torchvision":
        weights = _TV_RESNETS[arch][1]()
        try:
            state = weights.get_state_dict(progress=False)  # type: ignore[attr-defined]
        except Exception as exc:  # network errors come in many types
            raise UsageError(
                f"could not fetch torchvision weights for {arch} ({type(exc).__name__}: {exc}); "
                "download them where there is a network and pass --pretrained PATH"
            ) from None
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise UsageError(f"--pretrained: no such file {path}; give a torchvision {arch} state_dict (.pth)")
        state = load_torch_file(path)  # weights-only: a file is data, never code
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(unused)]
    unexpected = [k for k in unexpected if not k.startswith(unused)]
    if missing or unexpected:
        raise UsageError(
            f"--pretrained {pretrained}: not a {arch} state_dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _torchvision_resnet(arch: str, num_classes: int, pretrained: str | None) -> Network:
    net = _TV_RESNETS[arch][0]()
    if pretrained:
        _load_pretrained(arch, net, pretrained)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return Network(net, feature_dim, num_classes)


PLACES_TRUNK_LAYER4_BLOCKS = 2
"""Pretrained layer4 blocks the Places-LT trunk keeps (layer4.0, layer4.1; layer4.2 is replaced)."""


def _places_resnet152(num_classes: int, pretrained: str | None, load_pretrained: bool) -> Network:
    """Frozen ImageNet ResNet-152 without its last block + one fresh trainable bottleneck in its place.

    Follows the reference: it builds ResNet-152 with layer4 of 2 blocks, deletes the
    pretrained ``layer4.2.*`` (and ``fc.*``) weights before loading (reference
    models/resnet_places.py, not in our index; the same construction is in the derived copy
    juyongjiang/FBL models/resnet_places.py ``_resnet`` and ``resnet152_p``), and trains a
    separately built ``Bottleneck(2048, 512)`` with the classifier (train_stage1.py:123-126 builds
    it, :222-226 optimises block and classifier only, :288-290 keeps the trunk in eval mode;
    line numbers of the pull-request commit 6d9530e as stored in our code index). Stage 2's
    shift BN re-estimates this block's statistics only (train_stage2.py:303-308 at 0fc381e), which is what training ``body`` means here. The depth
    stays 152: 1 + 3·(3+8+36+3) + 1, as torchvision's ResNet-152. The new block keeps
    PyTorch's default initialisation, as the reference's standalone block does (the ResNet's
    kaiming_normal_ loop only runs inside ResNet.__init__). The trunk's modules keep
    torchvision's names (``trunk.layer4.1.conv3``) so weights map by name.
    """
    net = tv_models.resnet152()
    if load_pretrained:
        # a file without layer4.2 (the reference's trimmed dict) is as good as a full one
        _load_pretrained("resnet152", net, pretrained or "torchvision", unused=("fc.", "layer4.2."))
    trunk = nn.Sequential(
        OrderedDict(
            conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool, layer1=net.layer1,
            layer2=net.layer2, layer3=net.layer3,
            layer4=nn.Sequential(*list(net.layer4.children())[:PLACES_TRUNK_LAYER4_BLOCKS]),
        )
    )  # [B, 2048, 7, 7] at 224 px; the pretrained layer4.2 and fc are dropped here
    body = nn.Sequential(Bottleneck(2048, 512), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Network(body, 2048, num_classes, trunk=trunk)


ARCHS = ("resnet32", "resnet50", "resnet101", "resnet152", "resnet152_places")


def build_model(
    arch: str, num_classes: int, in_channels: int = 3, pretrained: str | None = None, *, load_pretrained: bool = True
) -> Network:
    """The backbone named ``arch`` with a fresh ``num_classes``-way linear classifier.

    ``load_pretrained=False`` builds the bare architecture, for loading a checkpoint into.
    """
    if arch == "resnet32":
        if pretrained:
            raise UsageError("stage1.pretrained is not available for resnet32 (trained from scratch)")
        net = Network(ResNet32Body(in_channels), 64, num_classes)
        if isinstance(net.classifier, nn.Linear):
            init_reference_resnet32(net.classifier)
        return net
    if in_channels != 3:
        raise UsageError(f"{arch} expects 3-channel images, the data set has {in_channels}")
    if arch in _TV_RESNETS:
        return _torchvision_resnet(arch, num_classes, pretrained if load_pretrained else None)
    if arch == "resnet152_places":
        return _places_resnet152(num_classes, pretrained, load_pretrained)
    raise UsageError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")
