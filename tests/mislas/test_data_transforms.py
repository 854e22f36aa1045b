"""Train/eval transforms: recipe per kind of split, output shape, dtype and normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from mislas.data import DATASETS, as_torch_dataset, eval_transform, load_dataset, train_transform


def _names(t: v2.Compose) -> list[str]:
    return [type(s).__name__ for s in t.transforms]


def test_array_recipe_and_normalisation(cifar10_root: Path, fmnist_root: Path) -> None:
    cifar = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10)
    assert _names(train_transform(cifar))[:2] == ["RandomCrop", "RandomHorizontalFlip"]
    crop = train_transform(cifar).transforms[0]
    assert crop.size == (32, 32) and crop.padding == [4, 4, 4, 4]
    x, y = as_torch_dataset(cifar.test, eval_transform(cifar))[0]
    raw = cifar.test.images[0].permute(2, 0, 1).float() / 255  # type: ignore[union-attr]
    mean, std = torch.tensor(cifar.mean)[:, None, None], torch.tensor(cifar.std)[:, None, None]
    assert type(x) is torch.Tensor and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)

    fm = load_dataset("fashion_mnist_lt", fmnist_root, n_max=20, imb_factor=10)
    xt, _ = as_torch_dataset(fm.train, train_transform(fm))[0]
    assert xt.shape == (1, 28, 28) and train_transform(fm).transforms[0].padding == [4, 4, 4, 4]


def test_list_recipe(image_tree: Path) -> None:
    data = load_dataset("places_lt", image_tree)
    assert _names(train_transform(data))[:4] == ["ToImage", "RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter"]
    jitter = train_transform(data).transforms[3]
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.6, 1.4)) and jitter.hue is None
    ev = eval_transform(data)
    assert _names(ev)[:3] == ["ToImage", "Resize", "CenterCrop"] and ev.transforms[1].size == [256]
    x, _ = as_torch_dataset(data.val, ev)[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32


def test_normalisation_constants_are_the_references() -> None:
    """iNat uses its own statistics (reference datasets/ina2018.py), ImageNet-LT and Places-LT ImageNet's."""
    assert DATASETS["inat2018"].mean == (0.466, 0.471, 0.380)
    assert DATASETS["inat2018"].std == (0.195, 0.194, 0.192)
    for name in ("imagenet_lt", "places_lt"):
        assert DATASETS[name].mean == (0.485, 0.456, 0.406) and DATASETS[name].std == (0.229, 0.224, 0.225)
    assert DATASETS["cifar10_lt"].mean == DATASETS["cifar100_lt"].mean == (0.4914, 0.4822, 0.4465)
    assert DATASETS["cifar10_lt"].std == DATASETS["cifar100_lt"].std == (0.2023, 0.1994, 0.2010)


def test_inat_eval_transform_normalises_with_its_constants(list_roots: dict[str, Path]) -> None:
    data = load_dataset("inat2018", list_roots["inat2018"])
    assert data.mean == (0.466, 0.471, 0.380) and data.std == (0.195, 0.194, 0.192)
    norm = eval_transform(data).transforms[-2]
    assert isinstance(norm, v2.Normalize)
    assert norm.mean == [0.466, 0.471, 0.380] and norm.std == [0.195, 0.194, 0.192]
    grey = torch.full((3, 300, 300), 128, dtype=torch.uint8)  # a uniform image: (128/255 - mean) / std everywhere
    x = eval_transform(data)(grey)
    expected = (128 / 255 - torch.tensor(data.mean)) / torch.tensor(data.std)
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-5) and x.shape == (3, 224, 224)
