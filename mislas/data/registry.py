"""The data-set registry and ``load_dataset``: the one place that knows each data set's facts.

Code elsewhere asks the registry (``DATASETS[name].kind``, ``.default_backbone``, ...) instead
of branching on data-set names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from mislas.data.cifar import load_cifar_lt
from mislas.data.fashion_mnist import load_fashion_mnist_lt
from mislas.data.image_list import load_image_list_lt
from mislas.data.types import DatasetSpec, Loader, LoadOptions, LTData
from mislas.errors import UsageError

# Normalisation constants, per channel in [0, 1] pixel units.
# CIFAR: the values of the LDAM-DRW / MiSLAS reference code, used there for CIFAR-10 and
# CIFAR-100 alike (the std is the oft-copied 0.2023..., not the true pixel std 0.247...).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
FASHION_MNIST_MEAN = (0.2860,)  # measured on the 60k training images
FASHION_MNIST_STD = (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ImageNet-LT and Places-LT (reference datasets/places.py:91)
IMAGENET_STD = (0.229, 0.224, 0.225)
# iNaturalist 2018: the reference's own statistics, not ImageNet's (datasets/ina2018.py:91 of
# dvlab-research/MiSLAS, train and eval transforms alike); its published iNat models expect them.
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)


def _array_spec(
    *,
    name: str,
    num_classes: int,
    n_max: int,
    val_per_class: int,
    image_size: int,
    in_channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    loader: Loader,
    description: str,
) -> DatasetSpec:
    """An in-memory set under the LDAM LT profile, β = 100 by default."""
    return DatasetSpec(
        name=name,
        num_classes=num_classes,
        kind="array",
        default_backbone="resnet32",
        default_imb_factor=100.0,
        default_n_max=n_max,
        default_val_per_class=val_per_class,
        image_size=image_size,
        in_channels=in_channels,
        mean=mean,
        std=std,
        train_list=None,
        val_list=None,
        test_list=None,
        loader=loader,
        description=description,
    )


def _list_spec(
    *,
    name: str,
    num_classes: int,
    backbone: Literal["resnet50", "resnet152_places"],
    train_list: str,
    val_list: str | None,
    test_list: str,
    val_per_class: int | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    description: str,
) -> DatasetSpec:
    """A split-list set at 224 px; ``val_list=None``: val held out of train."""
    return DatasetSpec(
        name=name,
        num_classes=num_classes,
        kind="list",
        default_backbone=backbone,
        default_imb_factor=None,
        default_n_max=None,
        default_val_per_class=val_per_class,
        image_size=224,
        in_channels=3,
        mean=mean,
        std=std,
        train_list=train_list,
        val_list=val_list,
        test_list=test_list,
        loader=load_image_list_lt,
        description=description,
    )


_SPECS = (
    _array_spec(name="cifar10_lt", num_classes=10, n_max=5000, val_per_class=100, image_size=32, in_channels=3,
                mean=CIFAR_MEAN, std=CIFAR_STD, loader=load_cifar_lt,
                description="CIFAR-10 train under the LDAM LT profile; official test set"),
    _array_spec(name="cifar100_lt", num_classes=100, n_max=500, val_per_class=20, image_size=32, in_channels=3,
                mean=CIFAR_MEAN, std=CIFAR_STD, loader=load_cifar_lt,
                description="CIFAR-100 train under the LDAM LT profile; official test set"),
    _list_spec(name="imagenet_lt", num_classes=1000, backbone="resnet50", train_list="ImageNet_LT_train.txt",
               val_list="ImageNet_LT_val.txt", test_list="ImageNet_LT_test.txt", val_per_class=None,
               mean=IMAGENET_MEAN, std=IMAGENET_STD,
               description="ImageNet-LT split lists (train 115,846; val 20 and test 50 a class)"),
    _list_spec(name="places_lt", num_classes=365, backbone="resnet152_places", train_list="Places_LT_train.txt",
               val_list="Places_LT_val.txt", test_list="Places_LT_test.txt", val_per_class=None,
               mean=IMAGENET_MEAN, std=IMAGENET_STD,
               description="Places-LT split lists (train 62,500; val 20 and test 100 a class)"),
    _list_spec(name="inat2018", num_classes=8142, backbone="resnet50", train_list="iNaturalist18_train.txt",
               val_list=None, test_list="iNaturalist18_val.txt", val_per_class=1, mean=INAT_MEAN, std=INAT_STD,
               description="iNaturalist 2018; the official val list is the test split, val held out of train"),
    _array_spec(name="fashion_mnist_lt", num_classes=10, n_max=1000, val_per_class=100, image_size=28,
                in_channels=1, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, loader=load_fashion_mnist_lt,
                description="Fashion-MNIST train under the LDAM LT profile (n_max 1000); official test set"),
)  # fmt: skip

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
"""name -> DatasetSpec, read-only."""


def get_spec(name: str) -> DatasetSpec:
    """The registry entry, or a UsageError that lists the allowed names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}") from None


def load_dataset(
    name: str,
    data_root: str | Path | None = None,
    *,
    imb_factor: float | None = None,
    n_max: int | None = None,
    seed: int = 0,
    val_per_class: int | None = None,
    train_list: str | None = None,
    val_list: str | None = None,
    test_list: str | None = None,
    download: bool = False,
    test_per_class: int | None = None,
) -> LTData:
    """Load a registered data set; ``None`` options take the data set's default.

    ``imb_factor``/``n_max``/``download``/``test_per_class`` apply to the array sets (CIFAR, Fashion-MNIST),
    the ``*_list`` overrides to the list sets; an option that does not apply raises
    :class:`~mislas.errors.UsageError` instead of being silently ignored. ``seed`` picks the
    LT subset and the held-out val split. Nothing is downloaded unless ``download=True``.
    """
    spec = get_spec(name)
    opts = LoadOptions(
        imb_factor=imb_factor,
        n_max=n_max,
        seed=seed,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        train_list=train_list,
        val_list=val_list,
        test_list=test_list,
        download=download,
    )
    return spec.loader(spec, None if data_root is None else Path(data_root), opts)
