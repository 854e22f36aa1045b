"""The long-tailed protocol shared by the in-memory data sets, the val hold-out, fingerprints.

LT profile (LDAM-DRW protocol, method.md): class ``i`` of ``K`` keeps
``n_i = int(n_max * (1/β) ** (i / (K - 1)))`` training images, chosen per class with a seeded
generator. The arithmetic is written exactly as the reference does it (``(1/β) ** x`` with
``1/β`` a float), because ``int`` truncation makes the published totals (CIFAR-10 β=100:
12,406; CIFAR-100 β=100: 10,847) sensitive to the order of float operations.

Randomness: the LT subset and the val hold-out draw from two separate numpy streams of the
same ``seed`` (``default_rng((seed, 0))`` and ``default_rng((seed, 1))``), so changing the
size of the val split never changes which images are trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mislas.data.types import ArraySplit, DatasetSpec, LoadOptions, LTData
from mislas.errors import UsageError

LT_STREAM = 0
VAL_STREAM = 1


def lt_class_counts(num_classes: int, n_max: int, imb_factor: float) -> list[int]:
    """Images kept per class: ``n_i = int(n_max * (1/β) ** (i / (K-1)))``.

    >>> lt_class_counts(10, 5000, 100)
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    check_lt_args(n_max=n_max, imb_factor=imb_factor)
    if num_classes == 1:
        return [int(n_max)]
    ratio = 1.0 / imb_factor
    return [int(n_max * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def check_lt_args(*, n_max: int, imb_factor: float) -> None:
    """Reject LT settings that make no sense, naming the argument."""
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise UsageError(f"n_max must be an integer >= 1, got n_max={n_max!r}")
    if isinstance(imb_factor, bool) or not isinstance(imb_factor, (int, float, np.floating, np.integer)):
        raise UsageError(f"imb_factor must be a number >= 1, got imb_factor={imb_factor!r}")
    if not math.isfinite(imb_factor) or imb_factor < 1:
        raise UsageError(
            f"imb_factor >= 1 must hold (β = largest / smallest class count), got imb_factor={imb_factor!r}"
        )
    if int(n_max / imb_factor) < 1:
        raise UsageError(
            f"n_max / imb_factor >= 1 must hold so that the smallest class keeps an image, "
            f"got n_max={n_max}, imb_factor={imb_factor}"
        )


def per_class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Indices of each class in ascending order, in one stable sort instead of K scans."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(num_classes)]


def lt_subsample(labels: np.ndarray, counts: Sequence[int], seed: int, *, source: str) -> np.ndarray:
    """Sorted indices of the LT subset: ``counts[c]`` images of class ``c``, chosen at random."""
    rng = np.random.default_rng((seed, LT_STREAM))
    chosen = []
    for c, idx in enumerate(per_class_indices(labels, len(counts))):
        if counts[c] > idx.size:
            raise UsageError(
                f"class {c} must have >= {counts[c]} training images for this LT profile, "
                f"but {source} has {idx.size}; lower n_max"
            )
        chosen.append(rng.permutation(idx)[: counts[c]])
    return np.sort(np.concatenate(chosen))


def holdout_balanced(
    labels: np.ndarray,
    candidates: np.ndarray,
    num_classes: int,
    per_class: int,
    seed: int,
    *,
    keep_at_least: int = 0,
) -> np.ndarray:
    """Sorted indices of a class-balanced hold-out: ``per_class`` images of each class from ``candidates``.

    A class with fewer than ``per_class + keep_at_least`` candidates gives
    ``max(0, n - keep_at_least)`` capped at ``per_class`` (so the head class of CIFAR-LT, which
    keeps every training image, gives none: the LT subset left nothing unused there).
    """
    if per_class < 0:
        raise UsageError(f"val_per_class must be >= 0, got val_per_class={per_class}")
    rng = np.random.default_rng((seed, VAL_STREAM))
    cand_labels = labels[candidates]
    held = []
    for pos in per_class_indices(cand_labels, num_classes):
        take = min(per_class, max(0, pos.size - keep_at_least))
        held.append(candidates[rng.permutation(pos)[:take]])
    return np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)


def sha256_hex(data: bytes | np.ndarray) -> str:
    """Hex digest of raw bytes or of an array's bytes (C order)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(data).hexdigest()


def fingerprint(payload: Mapping[str, Any]) -> str:
    """sha256 of a canonical JSON rendering of what defines a data set."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _array_lt_options(spec: DatasetSpec, opts: LoadOptions) -> tuple[float, int, int]:
    """β, n_max and val images per class of an in-memory LT data set (its defaults where not given)."""
    if opts.train_list or opts.val_list or opts.test_list:
        raise UsageError(f"train_list/val_list/test_list apply only to image-list data sets, not {spec.name}")
    imb_opt = spec.default_imb_factor if opts.imb_factor is None else opts.imb_factor
    assert imb_opt is not None, f"{spec.name} has no default imb_factor"
    n_max = spec.default_n_max if opts.n_max is None else opts.n_max
    val_per_class = spec.default_val_per_class if opts.val_per_class is None else opts.val_per_class
    assert n_max is not None and val_per_class is not None
    return float(imb_opt), n_max, val_per_class


def _array_split(images: np.ndarray, labels: np.ndarray) -> ArraySplit:
    """A split holding its own, writable uint8 copy of the images."""
    return ArraySplit(
        images=torch.from_numpy(np.array(images, dtype=np.uint8, order="C")),
        labels=torch.from_numpy(labels.astype(np.int64)),
    )


def build_array_lt(
    spec: DatasetSpec,
    opts: LoadOptions,
    *,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    source: str,
) -> LTData:
    """Apply the LT protocol to a balanced in-memory training set; val from the unused images.

    The val split is class-balanced (``val_per_class`` per class) and drawn only from the
    training images the LT subset left unused, so it is disjoint from ``train``. With the
    default ``n_max`` the head class keeps every image it has (CIFAR-10: 5000 of 5000), so it
    gets fewer val images (none for CIFAR-10/100 at the default ``n_max``); the test split is
    the official test set, untouched.
    """
    imb, n_max, val_per_class = _array_lt_options(spec, opts)
    k = spec.num_classes
    for what, lab in (("training", train_labels), ("test", test_labels)):
        if lab.size and (lab.min() < 0 or lab.max() >= k):
            raise UsageError(f"{source}: {what} labels must lie in 0..{k - 1}, got {int(lab.min())}..{int(lab.max())}")
    counts = lt_class_counts(k, n_max, imb)
    train_idx = lt_subsample(train_labels, counts, opts.seed, source=source)
    unused = np.setdiff1d(np.arange(train_labels.size), train_idx, assume_unique=True)
    val_idx = holdout_balanced(train_labels, unused, k, val_per_class, opts.seed)
    test_idx = np.arange(test_labels.size)
    if opts.test_per_class is not None:  # the first N of each class, in file order
        test_idx = np.sort(np.concatenate([np.flatnonzero(test_labels == c)[: opts.test_per_class]
                                           for c in range(k)])).astype(np.int64)

    fp = fingerprint(
        {
            "name": spec.name,
            "imb_factor": imb,
            "n_max": int(n_max),
            "seed": int(opts.seed),
            "val_per_class": int(val_per_class),
            "class_counts": counts,
            "train_indices": sha256_hex(train_idx.astype(np.int64)),
            "val_indices": sha256_hex(val_idx.astype(np.int64)),
            "source_train_labels": sha256_hex(train_labels.astype(np.int64)),
            "source_test_labels": sha256_hex(test_labels.astype(np.int64)),
            # only when set, so fingerprints of the whole test set stay what they were
            **({"test_per_class": int(opts.test_per_class)} if opts.test_per_class is not None else {}),
        }
    )
    return LTData(
        name=spec.name,
        num_classes=k,
        train=_array_split(train_images[train_idx], train_labels[train_idx]),
        val=_array_split(train_images[val_idx], train_labels[val_idx]),
        test=_array_split(test_images[test_idx], test_labels[test_idx]),
        class_counts=tuple(int(c) for c in counts),
        image_size=spec.image_size,
        in_channels=spec.in_channels,
        mean=spec.mean,
        std=spec.std,
        fingerprint=fp,
    )
