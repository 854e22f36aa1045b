"""The LDAM long-tailed profile, the val hold-out and CIFAR/Fashion-MNIST readers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mislas.data import DATASETS, ArraySplit, load_dataset, lt_class_counts
from mislas.data.fashion_mnist import SYSTEM_DIR
from mislas.errors import UsageError
from mislas.splits import class_splits

CIFAR10_B100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
FMNIST_B100 = [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]


def test_profile_matches_published_counts() -> None:
    assert lt_class_counts(10, 5000, 100) == CIFAR10_B100
    assert sum(lt_class_counts(10, 5000, 100)) == 12_406
    assert sum(lt_class_counts(100, 500, 100)) == 10_847
    assert lt_class_counts(10, 1000, 100) == FMNIST_B100
    assert lt_class_counts(10, 5000, 1) == [5000] * 10
    # method.md: CIFAR-100-LT β=100 gives 35 / 35 / 30 Many / Medium / Few; CIFAR-10 β=100 has no Few.
    assert {k: v.size for k, v in class_splits(lt_class_counts(100, 500, 100)).items()} == {
        "many": 35, "medium": 35, "few": 30,
    }  # fmt: skip
    assert class_splits(CIFAR10_B100)["few"].size == 0
    assert all(v.size for v in class_splits(FMNIST_B100).values())


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"imb_factor": 0.5}, "imb_factor"),
        ({"imb_factor": float("nan")}, "imb_factor"),
        ({"n_max": 0}, "n_max"),
        ({"n_max": 31}, "n_max"),  # more than the 30 a class the tiny set has
        ({"n_max": 20, "imb_factor": 40.0}, "imb_factor"),  # last class would keep 0 images
        ({"n_max": 20, "imb_factor": 10.0, "val_per_class": -1}, "val_per_class"),
        ({"n_max": 20, "train_list": "x.txt"}, "train_list"),
    ],
)
def test_bad_lt_options_name_the_argument(cifar10_root: Path, kwargs: dict, word: str) -> None:
    with pytest.raises(UsageError, match=word):
        load_dataset("cifar10_lt", cifar10_root, **kwargs)


@pytest.fixture(scope="module")
def cifar_full(tmp_path_factory: pytest.TempPathFactory, make_cifar) -> dict[str, Path]:
    """Full-size CIFAR-10 and CIFAR-100 pickles (50,000 rows of 3,072 zero bytes each)."""
    base = tmp_path_factory.mktemp("cifar_full")
    return {
        "cifar10_lt": make_cifar(base / "c10", num_classes=10, per_class=5000, test_per_class=1000, zeros=True),
        "cifar100_lt": make_cifar(base / "c100", num_classes=100, per_class=500, test_per_class=100, zeros=True),
    }


@pytest.mark.parametrize(("name", "total", "val"), [("cifar10_lt", 12_406, 900), ("cifar100_lt", 10_847, 99 * 20)])
def test_full_size_cifar_beta_100(cifar_full: dict[str, Path], name: str, total: int, val: int,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # what keeps a full-size load fast, counted rather than timed: each pickle is read once,
    # and each split is one uint8 tensor (no per-image objects)
    import mislas.data.cifar as cifar

    reads: list[str] = []
    real = cifar.read_cifar_pickle

    def counted(path: Path, label_key: bytes):  # type: ignore[no-untyped-def]
        reads.append(path.name)
        return real(path, label_key)

    monkeypatch.setattr(cifar, "read_cifar_pickle", counted)
    data = load_dataset(name, cifar_full[name], imb_factor=100)
    layout_files = {"cifar10_lt": [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"],
                    "cifar100_lt": ["train", "test"]}[name]
    assert sorted(reads) == sorted(layout_files)
    for split in (data.train, data.val, data.test):
        assert isinstance(split, ArraySplit) and split.images.shape[1:] == (32, 32, 3)
    assert len(data.train) == sum(data.class_counts) == total
    assert len(data.test) == 10_000
    # The head class keeps all its training images, so it has none left for val (documented).
    val_counts = np.bincount(data.val.labels.numpy(), minlength=data.num_classes)
    assert val_counts[0] == 0 and len(data.val) == val
    assert set(val_counts[1:].tolist()) == {DATASETS[name].default_val_per_class}


def test_lt_subset_is_seeded_and_independent_of_val_size(cifar10_root: Path) -> None:
    a = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10, val_per_class=5, seed=3)
    b = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10, val_per_class=5, seed=3)
    c = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10, val_per_class=2, seed=3)
    d = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10, val_per_class=5, seed=4)
    assert isinstance(a.train, ArraySplit) and isinstance(b.train, ArraySplit)
    assert isinstance(c.train, ArraySplit) and isinstance(d.train, ArraySplit)
    assert torch.equal(a.train.images, b.train.images) and a.fingerprint == b.fingerprint
    assert torch.equal(a.train.images, c.train.images) and a.fingerprint != c.fingerprint
    assert not torch.equal(a.train.images, d.train.images)
    assert len(c.val) == 2 * 10  # every class, the head too (20 of 30 kept), has >= 2 unused


def test_cifar_root_may_be_the_folder_itself_and_str_keys_work(tmp_path: Path, make_cifar) -> None:
    root = make_cifar(tmp_path, num_classes=100, per_class=12, test_per_class=2)
    folder = root / "cifar-100-python"
    for f in ("train", "test"):  # rewrite with str keys, as some re-exports do
        with open(folder / f, "rb") as fh:
            entry = pickle.load(fh)
        with open(folder / f, "wb") as fh:
            pickle.dump({k.decode(): v for k, v in entry.items()}, fh)
    a = load_dataset("cifar100_lt", root, n_max=10, imb_factor=5)
    b = load_dataset("cifar100_lt", folder, n_max=10, imb_factor=5)
    assert a.fingerprint == b.fingerprint and len(a.train) == sum(lt_class_counts(100, 10, 5))
    assert isinstance(a.train, ArraySplit) and tuple(a.train.images.shape[1:]) == (32, 32, 3)


def test_cifar_pixel_layout(tmp_path: Path, make_cifar) -> None:
    """Rows are 1024 R, 1024 G, 1024 B bytes, row-major: pixel (y, x) of channel c is row[c*1024 + y*32 + x]."""
    folder = make_cifar(tmp_path, num_classes=10, per_class=2, test_per_class=1) / "cifar-10-batches-py"
    with open(folder / "test_batch", "rb") as fh:
        entry = pickle.load(fh)
    data = load_dataset("cifar10_lt", tmp_path, n_max=2, imb_factor=1, val_per_class=0)
    assert isinstance(data.test, ArraySplit)
    row = entry[b"data"][0]
    img = data.test.images[0].numpy()
    for c, y, x in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert img[y, x, c] == row[c * 1024 + y * 32 + x]


def test_cifar_missing_and_corrupt(tmp_path: Path, make_cifar) -> None:
    with pytest.raises(UsageError, match=r"no CIFAR python pickles .*--data-root"):
        load_dataset("cifar10_lt", tmp_path / "nowhere")
    folder = make_cifar(tmp_path, num_classes=10, per_class=2, test_per_class=1) / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="data_batch_3"):
        load_dataset("cifar10_lt", tmp_path, n_max=2, imb_factor=1)


def test_fashion_mnist_layouts(tmp_path: Path, make_fashion_mnist) -> None:
    gz = make_fashion_mnist(tmp_path / "gz", per_class=30, test_per_class=4)
    plain = make_fashion_mnist(tmp_path / "tv" / "FashionMNIST" / "raw", per_class=30, test_per_class=4, gz=False)
    a = load_dataset("fashion_mnist_lt", gz, n_max=20, imb_factor=10)
    b = load_dataset("fashion_mnist_lt", tmp_path / "tv", n_max=20, imb_factor=10)  # torchvision's layout
    for data in (a, b):
        assert isinstance(data.train, ArraySplit) and tuple(data.train.images.shape[1:]) == (28, 28, 1)
        assert data.in_channels == 1 and len(data.test) == 40
    assert plain.is_dir() and a.fingerprint == b.fingerprint  # same seed, same generated labels


def test_fashion_mnist_missing_or_bad(tmp_path: Path, make_fashion_mnist) -> None:
    with pytest.raises(UsageError, match=r"apt-get install dataset-fashion-mnist.*--data-root"):
        load_dataset("fashion_mnist_lt", tmp_path)
    folder = make_fashion_mnist(tmp_path / "bad", per_class=30, test_per_class=4, gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(UsageError, match=r"train-labels-idx1-ubyte.*magic"):
        load_dataset("fashion_mnist_lt", folder)


@pytest.mark.skipif(
    not (SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian Fashion-MNIST not installed in {SYSTEM_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_real_debian_fashion_mnist() -> None:
    data = load_dataset("fashion_mnist_lt")
    assert list(data.class_counts) == FMNIST_B100
    assert len(data.train) == 2478 and len(data.val) == 1000 and len(data.test) == 10_000
    assert isinstance(data.train, ArraySplit)
    pixels = data.test.images.float() / 255  # type: ignore[union-attr]
    assert pixels.mean().item() == pytest.approx(data.mean[0], abs=0.01)
    assert pixels.std().item() == pytest.approx(data.std[0], abs=0.01)


def test_test_per_class_keeps_the_first_images_of_each_class(cifar10_root: Path, list_roots: dict[str, Path]) -> None:
    whole = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10)
    two = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10, test_per_class=2)
    with open(cifar10_root / "cifar-10-batches-py" / "test_batch", "rb") as fh:  # the file itself
        labels = np.array(pickle.load(fh)[b"labels"])
    keep = sorted(i for c in range(10) for i in np.flatnonzero(labels == c)[:2])
    assert isinstance(two.test, ArraySplit) and isinstance(whole.test, ArraySplit)
    assert two.test.labels.tolist() == labels[keep].tolist() and len(whole.test) == labels.size == 30
    assert torch.equal(two.test.images, whole.test.images[keep])
    assert torch.equal(two.train.images, whole.train.images) and two.fingerprint != whole.fingerprint
    with pytest.raises(UsageError, match="test_per_class applies only to the CIFAR/Fashion-MNIST LT profiles"):
        load_dataset("places_lt", list_roots["places_lt"], test_per_class=2)
