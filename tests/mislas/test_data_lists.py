"""Split lists (ImageNet-LT, Places-LT, iNat 2018): parsing, errors, loading images, describe."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mislas.data import (
    DATASETS,
    FileListSplit,
    as_torch_dataset,
    describe,
    eval_transform,
    load_dataset,
    make_loader,
    train_transform,
)
from mislas.data.image_list import read_image_list
from mislas.errors import UsageError


def test_parse_blank_lines_spaces_crlf(tmp_path: Path) -> None:
    f = tmp_path / "l.txt"
    f.write_bytes("\ufeffa/b c.jpg 3\r\n\r\n  d/e.png\t0  \n\nf.jpg 364".encode())
    paths, labels, digest = read_image_list(f, 365)
    assert paths == ("a/b c.jpg", "d/e.png", "f.jpg")
    assert labels.tolist() == [3, 0, 364] and labels.dtype == np.int64 and len(digest) == 64


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("a.jpg 1\nb.jpg\n", r"l\.txt:2: malformed line 'b.jpg'; expected `relative/path <integer label>`"),
        ("a.jpg 1\n\nb.jpg 1.5\n", r"l\.txt:3: malformed line 'b.jpg 1.5'"),
        ("a.jpg 1_0\n", r"l\.txt:1: malformed line"),
        ("a.jpg 1\n\n\nb.jpg 365\n", r"l\.txt:4: label 365 is out of range; allowed 0\.\.364"),
        ("a.jpg -1\n", r"l\.txt:1: label -1 is out of range; allowed 0\.\.364"),
    ],
)
def test_parse_errors_name_file_line_and_rule(tmp_path: Path, content: str, pattern: str) -> None:
    f = tmp_path / "l.txt"
    f.write_text(content)
    with pytest.raises(UsageError, match=pattern):
        read_image_list(f, 365)


def test_missing_root_list_and_unknown_set(tmp_path: Path, list_roots: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match=re.escape(f"data root {tmp_path / 'nope'} does not exist")):
        load_dataset("places_lt", tmp_path / "nope")
    with pytest.raises(UsageError, match="needs a data root"):
        load_dataset("places_lt")
    with pytest.raises(UsageError, match=re.escape(f"list file {tmp_path / 'Places_LT_train.txt'} does not exist")):
        load_dataset("places_lt", tmp_path)
    with pytest.raises(UsageError, match=r"list file .*other\.txt does not exist"):
        load_dataset("places_lt", list_roots["places_lt"], test_list="other.txt")
    with pytest.raises(UsageError, match=r"unknown data set 'places'; allowed: cifar10_lt, .*inat2018"):
        load_dataset("places")
    for kwargs in ({"imb_factor": 10.0}, {"n_max": 5}, {"val_per_class": 2}, {"download": True}):
        with pytest.raises(UsageError, match=next(iter(kwargs))):
            load_dataset("places_lt", list_roots["places_lt"], **kwargs)


def test_list_overrides_absolute_and_relative(tmp_path: Path, list_roots: dict[str, Path], make_list) -> None:
    root = list_roots["imagenet_lt"]
    rel = make_list(root / "sub" / "mini.txt", [("x.jpg", 0), ("y.jpg", 999)])
    absolute = make_list(tmp_path / "abs.txt", [("z.jpg", 5)])
    data = load_dataset("imagenet_lt", root, train_list="sub/mini.txt", test_list=str(absolute))
    assert isinstance(data.train, FileListSplit) and isinstance(data.test, FileListSplit)
    assert data.train.paths == ("x.jpg", "y.jpg") and data.train.list_file == rel
    assert data.test.list_file == absolute and data.test.root == root
    assert data.class_counts[0] == data.class_counts[999] == 1 and sum(data.class_counts) == 2


def test_inat_val_held_out_from_train(list_roots: dict[str, Path]) -> None:
    """Fixture: even classes have 4 train images, odd ones 2; only classes with >= 4 give one to val."""
    data = load_dataset("inat2018", list_roots["inat2018"])
    k = DATASETS["inat2018"].num_classes
    val_counts = np.bincount(data.val.labels.numpy(), minlength=k)
    assert val_counts[0::2].tolist() == [1] * len(val_counts[0::2]) and not val_counts[1::2].any()
    assert data.class_counts[0] == 3 and data.class_counts[1] == 2
    assert isinstance(data.test, FileListSplit) and data.test.list_file.name == "iNaturalist18_val.txt"
    assert len(load_dataset("inat2018", list_roots["inat2018"], val_per_class=0).val) == 0
    with pytest.raises(UsageError, match="val_list"):
        load_dataset("inat2018", list_roots["inat2018"], val_list="x.txt")


def test_images_load_through_make_loader(image_tree: Path) -> None:
    data = load_dataset("places_lt", image_tree)
    assert data.image_size == 224 and data.in_channels == 3
    g = torch.Generator().manual_seed(0)
    train = make_loader(
        data.train, train_transform(data), batch_size=4, sampler="instance", num_classes=365, generator=g
    )
    x, y = next(iter(train))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    assert sorted(y.tolist()) == sorted(data.train.labels.tolist())
    test = make_loader(
        data.test, eval_transform(data), batch_size=8, sampler="sequential", num_classes=365, generator=g
    )
    batches = list(test)
    assert len(batches) == 1 and batches[0][0].shape == (2, 3, 224, 224)
    assert batches[0][1].tolist() == [1, 364]
    grey = as_torch_dataset(data.test, None)[1][0]  # a greyscale PNG, opened as RGB by default_loader
    assert grey.mode == "RGB" and grey.size == (30, 30)


def test_describe_without_images_and_check_files(list_roots: dict[str, Path], image_tree: Path) -> None:
    out = describe("places_lt", list_roots["places_lt"])
    counts = out["class_counts"]
    assert out["num_classes"] == 365 and out["train_images"] == sum(counts)
    assert out["val_images"] == out["test_images"] == 365
    assert out["imbalance_ratio"] == max(counts) / min(counts)
    assert sum(out["splits"].values()) == 365 and "missing_files" not in out
    checked = describe("places_lt", list_roots["places_lt"], check_files=True)
    assert checked["missing_count"] == out["train_images"] + 2 * 365  # no image exists there
    assert len(checked["missing_files"]) == 100
    complete = describe("places_lt", image_tree, check_files=True)
    assert complete["missing_count"] == 0 and complete["missing_files"] == []
    assert complete["classes_without_train_images"] == 362  # the tree uses classes 0, 1, 364 only
