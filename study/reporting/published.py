"""Published figures of MiSLAS and its baselines, shown beside the study's own numbers.

Sources (all percentages; top-1 on the balanced test/eval set; ECE with 15 bins):
  [T7] Zhong, Cui, Liu, Jia, "Improving Calibration for Long-Tailed Recognition", CVPR 2021
       (arXiv 2104.00466), supplementary Table 7 (ImageNet-LT, ResNet-50/101/152, 180 epochs);
  [T8] same, supplementary Table 8 (iNaturalist 2018, ResNet-50, 200 epochs);
  [T9] same, supplementary Table 9 (Places-LT, ImageNet-pretrained ResNet-152);
  [M]  Stage-1 (mixup) and MiSLAS top-1 / ECE from the reference repository's README (dvlab-research/MiSLAS),
       "Published results". Stage 1 with mixup evaluated alone is our "CE+mixup" row.
The supplementary text is shared/seeds/000_e241ac29309c9860.txt. Nothing here is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from study.reporting.common import GroupKey

NAN = math.nan


@dataclass(frozen=True)
class PublishedRow:
    """One published result; NaN where the source gives no figure."""

    dataset: str
    imb_factor: float | None
    archs: tuple[str, ...]  # our registry names that are this backbone
    method: str  # ce, crt, lws, tau_norm, mislas
    mixup: bool
    many: float
    medium: float
    few: float
    all: float
    ece: float
    source: str


R32 = ("resnet32",)
R50 = ("resnet50",)
R101 = ("resnet101",)
R152 = ("resnet152",)
R152_PLACES = ("resnet152_places", "resnet152")


def _cifar(dataset: str, beta: float, s1: tuple[float, float], mislas: tuple[float, float]) -> list[PublishedRow]:
    return [
        PublishedRow(dataset, beta, R32, "ce", True, NAN, NAN, NAN, s1[0], s1[1], "M"),
        PublishedRow(dataset, beta, R32, "mislas", True, NAN, NAN, NAN, mislas[0], mislas[1], "M"),
    ]


def _table(dataset: str, archs: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[PublishedRow]:
    return [PublishedRow(dataset, None, archs, m, mix, a, b, c, d, e, s) for m, mix, a, b, c, d, e, s in rows]


PUBLISHED: tuple[PublishedRow, ...] = tuple(
    _cifar("cifar10_lt", 10.0, (87.6, 11.9), (90.0, 1.20))
    + _cifar("cifar10_lt", 50.0, (78.1, 2.49), (85.7, 2.01))
    + _cifar("cifar10_lt", 100.0, (72.8, 2.14), (82.5, 3.66))
    + _cifar("cifar100_lt", 10.0, (59.1, 5.24), (63.2, 1.73))
    + _cifar("cifar100_lt", 50.0, (45.4, 4.33), (52.3, 2.47))
    + _cifar("cifar100_lt", 100.0, (39.5, 8.82), (47.0, 4.83))
    + _table("imagenet_lt", R50, [
        ("ce", True, NAN, NAN, NAN, 45.5, 7.98, "M"),
        ("crt", False, 62.5, 47.4, 29.5, 50.3, NAN, "T7"),
        ("lws", False, 61.8, 48.6, 33.5, 51.2, NAN, "T7"),
        ("crt", True, 63.9, 49.1, 30.2, 51.7, NAN, "T7"),
        ("lws", True, 62.9, 49.8, 31.6, 52.0, NAN, "T7"),
        ("mislas", True, 61.7, 51.3, 35.8, 52.7, 1.78, "T7+M"),
    ])
    + _table("imagenet_lt", R101, [
        ("crt", False, 63.8, 48.5, 30.0, 51.4, NAN, "T7"),
        ("lws", False, 63.1, 49.9, 33.8, 52.3, NAN, "T7"),
        ("crt", True, 65.2, 50.6, 31.6, 53.1, NAN, "T7"),
        ("lws", True, 64.5, 51.2, 34.1, 53.5, NAN, "T7"),
        ("mislas", True, 64.3, 52.1, 35.8, 54.1, NAN, "T7"),
    ])
    + _table("imagenet_lt", R152, [
        ("crt", False, 64.9, 50.4, 30.6, 52.7, NAN, "T7"),
        ("lws", False, 64.1, 51.8, 35.5, 53.8, NAN, "T7"),
        ("crt", True, 66.5, 51.6, 32.8, 54.2, NAN, "T7"),
        ("lws", True, 66.1, 52.2, 34.5, 54.6, NAN, "T7"),
        ("mislas", True, 65.4, 53.2, 37.1, 55.2, NAN, "T7"),
    ])
    + _table("inat2018", R50, [
        ("ce", True, NAN, NAN, NAN, 66.9, 5.37, "M"),
        ("crt", False, 73.2, 68.8, 66.1, 68.2, NAN, "T8"),
        ("tau_norm", False, 71.1, 68.9, 69.3, 69.3, NAN, "T8"),
        ("lws", False, 71.0, 69.8, 68.8, 69.5, NAN, "T8"),
        ("crt", True, 74.2, 71.1, 68.2, 70.2, NAN, "T8"),
        ("lws", True, 72.8, 71.6, 69.8, 70.9, NAN, "T8"),
        ("mislas", True, 73.2, 72.4, 70.4, 71.6, 7.67, "T8+M"),
    ])
    + _table("places_lt", R152_PLACES, [
        ("ce", True, NAN, NAN, NAN, 29.4, 16.7, "M"),
        ("crt", False, 42.0, 37.6, 24.9, 36.7, NAN, "T9"),
        ("tau_norm", False, 37.8, 40.7, 31.8, 37.9, NAN, "T9"),
        ("lws", False, 40.6, 39.1, 28.6, 37.6, NAN, "T9"),
        ("crt", True, 44.1, 38.5, 27.1, 38.1, NAN, "T9"),
        ("lws", True, 41.7, 41.3, 33.1, 39.7, NAN, "T9"),
        ("mislas", True, 39.6, 43.3, 36.1, 40.4, 3.41, "T9+M"),
    ])
)

SOURCES = {
    "T7": "Zhong et al. 2021, suppl. Table 7 (ImageNet-LT)",
    "T8": "Zhong et al. 2021, suppl. Table 8 (iNaturalist 2018)",
    "T9": "Zhong et al. 2021, suppl. Table 9 (Places-LT)",
    "M": "the MiSLAS reference repository's README (dvlab-research/MiSLAS), Stage-1/MiSLAS top-1 and ECE",
}


def published_for(group: GroupKey, method: str, mixup: bool) -> PublishedRow | None:
    """The published row for this data set, β, backbone and method, if the paper has one."""
    for row in PUBLISHED:
        same_beta = (row.imb_factor is None and group.imb_factor is None) or (
            row.imb_factor is not None and group.imb_factor is not None
            and math.isclose(row.imb_factor, group.imb_factor)
        )
        if row.dataset == group.dataset and same_beta and group.arch in row.archs \
                and row.method == method and row.mixup == mixup:
            return row
    return None
