"""Data layer: long-tailed data sets, splits, transforms, samplers, loaders, ``describe``.

Modules: ``types`` (value types), ``lt`` (LT profile, val hold-out, fingerprints), ``cifar``,
``fashion_mnist``, ``image_list`` (readers), ``registry`` (``DATASETS``, ``load_dataset``),
``transforms``, ``datasets`` (``as_torch_dataset``), ``samplers`` (``ClassAwareSampler``),
``loaders`` (``make_loader``), ``describe``.
"""

from __future__ import annotations

from mislas.data.datasets import as_torch_dataset
from mislas.data.describe import describe
from mislas.data.loaders import SAMPLERS, make_loader
from mislas.data.lt import lt_class_counts
from mislas.data.registry import DATASETS, get_spec, load_dataset
from mislas.data.samplers import ClassAwareSampler
from mislas.data.transforms import eval_transform, train_transform
from mislas.data.types import ArraySplit, DatasetSpec, FileListSplit, LTData, Split

__all__ = [
    "DATASETS",
    "SAMPLERS",
    "ArraySplit",
    "ClassAwareSampler",
    "DatasetSpec",
    "FileListSplit",
    "LTData",
    "Split",
    "as_torch_dataset",
    "describe",
    "eval_transform",
    "get_spec",
    "load_dataset",
    "lt_class_counts",
    "make_loader",
    "train_transform",
]
