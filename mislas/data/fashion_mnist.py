"""Fashion-MNIST-LT from IDX files (gzip or plain).

Written by hand because torchvision's ``FashionMNIST`` reads only the uncompressed files
under ``root/FashionMNIST/raw`` and checks MD5s that the Debian ``dataset-fashion-mnist``
``.gz`` files do not match, so with ``download=False`` it would refuse them and with
``download=True`` it would go to the network (platform notes). torchvision is used only for
an explicit ``download=True``.

Search order: ``data_root`` itself, then ``data_root/FashionMNIST/raw`` (torchvision's
layout); with no ``data_root``, ``/usr/share/datasets/fashion-mnist`` (Debian).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mislas.data.lt import build_array_lt
from mislas.data.types import DatasetSpec, LoadOptions, LTData
from mislas.errors import UsageError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_ROOT = Path("data")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format) of unsigned bytes as a numpy array.

    Header: two zero bytes, the type code (0x08 = ubyte), the number of dimensions, then each
    dimension as a big-endian int32; the data follow in C order.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UsageError(f"{path}: cannot read an IDX file ({type(exc).__name__}: {exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise UsageError(f"{path}: not an unsigned-byte IDX file (magic must be 00 00 08 nd, got {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise UsageError(f"{path}: IDX header says {dims} ({expected} bytes), file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(folders: list[Path]) -> dict[str, Path] | None:
    """The four IDX files from the first folder that has all of them."""
    for folder in folders:
        found = {key: _find_file(folder, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return {k: v for k, v in found.items() if v is not None}
    return None


def load_fashion_mnist_lt(spec: DatasetSpec, data_root: Path | None, opts: LoadOptions) -> LTData:
    """Fashion-MNIST-LT: LT subset of the 60k training images, val from unused, official test."""
    if data_root is not None:
        root = Path(data_root)
        folders = [root, root / "FashionMNIST" / "raw"]
    else:
        root = DOWNLOAD_ROOT
        folders = [SYSTEM_DIR, root / "FashionMNIST" / "raw"]
    files = find_fashion_mnist(folders)
    if files is None and opts.download:
        from torchvision import datasets

        for train in (True, False):
            datasets.FashionMNIST(root=str(root), train=train, download=True)
        files = find_fashion_mnist(folders)
    if files is None:
        looked = ", ".join(str(f) for f in folders)
        raise UsageError(
            f"{spec.name}: no Fashion-MNIST IDX files ({FILES['train_images']}[.gz] and 3 more) in {looked}; "
            f"install them with `apt-get install dataset-fashion-mnist`, pass --data-root to a folder "
            f"holding them, or use download=True"
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise UsageError(
                f"{files[f'{part}_images']}: images must be [N, H, W] with N labels, "
                f"got {images.shape} and labels {labels.shape}"
            )
        if images.shape[1:] != (spec.image_size, spec.image_size):
            raise UsageError(
                f"{files[f'{part}_images']}: images must be {spec.image_size}x{spec.image_size}, got {images.shape[1:]}"
            )
    return build_array_lt(
        spec,
        opts,
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int64),
        source=str(files["train_images"].parent),
    )
