"""How the MiSLAS reference numbers the classes of its list data sets, restated exactly.

Class order: for its list data sets the reference renumbers classes by descending train count
(datasets/places.py:26-34 and datasets/ina2018.py:26-34, ``class_map`` from
``np.argsort(-counts)``, applied to the eval list too, :72). Output j of a reference model is
therefore the class of rank j, and rows must be put back in label order. NumPy's default
argsort is not stable, and its tie order changed with the AVX-512 sort of NumPy >= 1.25, so
:func:`reference_class_map` restates the classic introsort that the reference's NumPy (2021)
ran. CIFAR-LT is not renumbered (datasets/cifar100.py: ``targets`` kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mislas.data.types import FileListSplit, LTData

__all__ = ["reference_class_map", "reference_class_order"]

_SMALL_QUICKSORT = 15  # NumPy's cut-over to insertion sort (partitions of at most 16 elements)


def _classic_argsort(values: Sequence[int]) -> list[int]:
    """NumPy's pre-SIMD default argsort: median-of-3 introsort, insertion sort below 17, heapsort past 2·log2 n.

    Restated (not NumPy's code) so that ties come out as the reference's NumPy put them;
    checked against NumPy 1.26's generic path on random arrays with many ties. NumPy >= 1.25
    on AVX-512 machines uses another algorithm with another tie order.
    """
    v = [int(x) for x in values]
    n = len(v)
    idx = list(range(n))
    stack: list[tuple[int, int, int]] = []
    lo, hi, depth = 0, n - 1, 2 * (n.bit_length() - 1)
    while n > 1:
        if depth < 0:
            _heap_argsort(v, idx, lo, hi - lo + 1)
        else:
            while hi - lo > _SMALL_QUICKSORT:
                i = _partition(v, idx, lo, hi)
                depth -= 1
                if i - lo < hi - i:  # keep the smaller side, stack the larger
                    stack.append((i + 1, hi, depth))
                    hi = i - 1
                else:
                    stack.append((lo, i - 1, depth))
                    lo = i + 1
            _insertion_argsort(v, idx, lo, hi)
        if not stack:
            break
        lo, hi, depth = stack.pop()
    return idx


def _partition(v: list[int], idx: list[int], lo: int, hi: int) -> int:
    """One quicksort partition of ``idx[lo:hi + 1]`` around the median of 3; the pivot's final place."""
    mid = lo + ((hi - lo) >> 1)
    if v[idx[mid]] < v[idx[lo]]:
        idx[mid], idx[lo] = idx[lo], idx[mid]
    if v[idx[hi]] < v[idx[mid]]:
        idx[hi], idx[mid] = idx[mid], idx[hi]
    if v[idx[mid]] < v[idx[lo]]:
        idx[mid], idx[lo] = idx[lo], idx[mid]
    pivot = v[idx[mid]]
    i, j = lo, hi - 1
    idx[mid], idx[j] = idx[j], idx[mid]
    while True:
        i += 1
        while v[idx[i]] < pivot:
            i += 1
        j -= 1
        while pivot < v[idx[j]]:
            j -= 1
        if i >= j:
            break
        idx[i], idx[j] = idx[j], idx[i]
    idx[i], idx[hi - 1] = idx[hi - 1], idx[i]
    return i


def _insertion_argsort(v: list[int], idx: list[int], lo: int, hi: int) -> None:
    """Insertion sort of ``idx[lo:hi + 1]`` by ``v`` (NumPy's, for partitions of at most 16)."""
    for i in range(lo + 1, hi + 1):
        item, j = idx[i], i
        while j > lo and v[item] < v[idx[j - 1]]:
            idx[j] = idx[j - 1]
            j -= 1
        idx[j] = item


def _heap_argsort(v: list[int], idx: list[int], start: int, count: int) -> None:
    """Heapsort of ``idx[start:start + count]`` by ``v`` (1-based heap, as NumPy's)."""

    def sift(i: int, size: int, item: int) -> None:
        j = 2 * i
        while j <= size:
            if j < size and v[idx[start + j - 1]] < v[idx[start + j]]:
                j += 1
            if v[item] < v[idx[start + j - 1]]:
                idx[start + i - 1] = idx[start + j - 1]
                i, j = j, 2 * j
            else:
                break
        idx[start + i - 1] = item

    for top in range(count >> 1, 0, -1):
        sift(top, count, idx[start + top - 1])
    size = count
    while size > 1:
        item = idx[start + size - 1]
        idx[start + size - 1] = idx[start]
        size -= 1
        sift(1, size, item)


def reference_class_map(counts: Sequence[int]) -> tuple[int, ...]:
    """``class_map[c]``: the reference's index of class ``c`` (rank by descending train count).

    As datasets/places.py:29-32 builds it: ``sorted = argsort(-counts)``,
    ``class_map[sorted[i]] = i``, with NumPy's classic tie order.
    """
    order = _classic_argsort([-int(c) for c in counts])
    class_map = [0] * len(order)
    for rank, cls in enumerate(order):
        class_map[cls] = rank
    return tuple(class_map)


def reference_class_order(data: LTData) -> tuple[int, ...] | None:
    """How the reference numbered ``data``'s classes: a class map for list data sets, None for CIFAR.

    The reference counts its whole train list; where our val split is held out of that list
    (iNaturalist), its images are counted back in.
    """
    if not isinstance(data.train, FileListSplit):
        return None
    labels = data.train.labels
    if isinstance(data.val, FileListSplit) and data.val.list_file == data.train.list_file:
        labels = torch.cat([labels, data.val.labels])
    counts = torch.bincount(labels, minlength=data.num_classes).tolist()
    return reference_class_map(counts)
