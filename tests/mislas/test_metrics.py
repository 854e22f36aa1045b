"""Metrics checked against independent computations and hand-worked numbers."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mislas.metrics as metrics
from mislas.metrics import (
    classifier_weight_norms,
    ece_mce,
    evaluate_logits,
    nll,
    per_class_accuracy,
    reliability_bins,
    split_accuracy,
)

CIFAR10_B100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR100_B100 = [int(500 * 0.01 ** (i / 99)) for i in range(100)]


def _loop_ece_mce(conf: list[float], correct: list[bool], n_bins: int = 15) -> tuple[float, float]:
    """Independent reference: a plain loop, bin b = ceil(c·n) − 1 (right-closed), 0 → bin 0."""
    members: dict[int, list[tuple[float, float]]] = {}
    for c, ok in zip(conf, correct):
        b = max(math.ceil(c * n_bins) - 1, 0)
        members.setdefault(b, []).append((c, 1.0 if ok else 0.0))
    ece, mce = 0.0, 0.0
    for items in members.values():
        avg_conf = math.fsum(c for c, _ in items) / len(items)
        avg_acc = math.fsum(a for _, a in items) / len(items)
        ece += len(items) / len(conf) * abs(avg_acc - avg_conf)
        mce = max(mce, abs(avg_acc - avg_conf))
    return ece, mce


def _places_style_counts() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """365 classes, 4980..5 images, 131 / 163 / 71 classes above 100 / in 20..100 / below 20
    (the split sizes of the real Places-LT list), with classes on every threshold, shuffled."""
    many = np.round(np.geomspace(4980, 101, 131)).astype(int)
    medium = np.round(np.linspace(100, 20, 163)).astype(int)
    few = np.round(np.linspace(19, 5, 71)).astype(int)
    sorted_counts = np.concatenate([many, medium, few])
    perm = np.random.default_rng(7).permutation(365)
    counts = np.empty(365, dtype=int)
    counts[perm] = sorted_counts  # class perm[j] gets the j-th largest count
    truth = {"many": perm[:131], "medium": perm[131:294], "few": perm[294:]}
    return counts, truth


# ---------------------------------------------------------------- ECE / MCE


def test_ece_mce_hand_worked() -> None:
    # 0.95 → bin 14 (14/15, 1]: 3 of 4 right, gap 0.2; 0.55 → bin 8 (8/15, 9/15]: 1 of 2, gap 0.05.
    ece, mce = ece_mce([0.95] * 4 + [0.55] * 2, [1, 1, 1, 0, 1, 0])
    assert ece == pytest.approx(4 / 6 * 0.2 + 2 / 6 * 0.05, abs=1e-12)  # 0.15
    assert mce == pytest.approx(0.2, abs=1e-12)


def test_module_doctests_pass() -> None:
    result = doctest.testmod(metrics)
    assert result.attempted > 0 and result.failed == 0


def test_boundary_confidence_lands_in_lower_bin() -> None:
    """Right-closed bins: 5/15 belongs to (4/15, 5/15], not (5/15, 6/15]."""
    bins = reliability_bins([5 / 15, 5 / 15], [True, False])
    assert bins[4]["count"] == 2 and bins[5]["count"] == 0
    assert bins[4]["upper"] == 5 / 15 and bins[5]["lower"] == 5 / 15
    # all-correct at exactly 1/15 and 15/15: gaps 14/15 and 0
    ece, mce = ece_mce([1 / 15, 1.0], [True, True])
    assert ece == pytest.approx(0.5 * (1 - 1 / 15), abs=1e-12)
    assert mce == pytest.approx(1 - 1 / 15, abs=1e-12)
    # 0 exactly goes to bin 0 and counts in N
    assert reliability_bins([0.0, 0.5], [False, True])[0]["count"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_mce_match_independent_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 2, size=997).tolist() + [k / 15 for k in range(16)]
    correct = (rng.random(len(conf)) < np.asarray(conf) ** 1.5).tolist()
    want = _loop_ece_mce(conf, correct)
    got = ece_mce(np.asarray(conf), np.asarray(correct))
    assert got[0] == pytest.approx(want[0], abs=1e-12)
    assert got[1] == pytest.approx(want[1], abs=1e-12)
    got_t = ece_mce(torch.tensor(conf, dtype=torch.float64), torch.tensor(correct))
    assert got_t[0] == pytest.approx(want[0], abs=1e-12)


def test_reliability_bins_structure() -> None:
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.5, 1.0, size=200)
    correct = rng.random(200) < conf
    bins = reliability_bins(conf, correct)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 200
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    for b in bins:
        if b["count"] == 0:
            assert b["accuracy"] is None and b["confidence"] is None
        else:
            inside = (conf > b["lower"]) & (conf <= b["upper"])
            assert b["count"] == inside.sum()
            assert b["accuracy"] == pytest.approx(correct[inside].mean())
            assert b["confidence"] == pytest.approx(conf[inside].mean())
    assert bins[0]["count"] == 0 and bins[0]["accuracy"] is None  # nothing below 0.5


@pytest.mark.parametrize(
    ("conf", "correct", "match"),
    [
        ([0.5, 0.6], [True], "same length"),
        ([], [], "non-empty"),
        ([0.5, 1.2], [True, False], r"\[0, 1\]"),
        ([0.5, float("nan")], [True, False], r"\[0, 1\]"),
        ([0.5, 0.6], [1, 2], "0/1"),
    ],
)
def test_ece_input_validation(conf: list[float], correct: list[object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ece_mce(conf, correct)


# ---------------------------------------------------------------- NLL, per-class, norms


def test_nll_equals_cross_entropy() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(50, 7, generator=g) * 4
    labels = torch.randint(0, 7, (50,), generator=g)
    assert nll(logits, labels) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert nll(logits.numpy(), labels.numpy()) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        nll(logits, torch.full((50,), 7))


def test_per_class_accuracy_with_missing_class() -> None:
    labels = [0, 0, 0, 1, 1, 3]
    preds = [0, 2, 0, 1, 0, 3]
    acc = per_class_accuracy(preds, labels, num_classes=4)
    assert acc[0] == pytest.approx(2 / 3) and acc[1] == 0.5 and acc[3] == 1.0
    assert math.isnan(acc[2])


def test_classifier_weight_norms() -> None:
    w = torch.randn(12, 33, generator=torch.Generator().manual_seed(6))
    np.testing.assert_allclose(classifier_weight_norms(w), torch.linalg.norm(w, dim=1).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        classifier_weight_norms(torch.zeros(3))


# ---------------------------------------------------------------- splits


def test_split_accuracy_cifar10_has_no_few() -> None:
    acc = np.array([90, 85, 80, 75, 70, 60, 50, 40, 30, 20], dtype=float)
    out = split_accuracy(acc, CIFAR10_B100)
    assert out["many"] == pytest.approx(np.mean([90, 85, 80, 75, 70, 60, 50, 40]))  # counts > 100
    assert out["medium"] == pytest.approx(25.0)  # 83 and 50
    assert out["few"] is None


def test_split_accuracy_places_style_thresholds() -> None:
    counts, truth = _places_style_counts()
    assert counts.max() == 4980 and counts.min() == 5
    assert {100, 101, 20, 19} <= set(counts.tolist())
    acc = np.random.default_rng(8).uniform(0, 100, size=365)
    out = split_accuracy(acc, counts)
    for name in ("many", "medium", "few"):
        assert out[name] == pytest.approx(acc[truth[name]].mean(), abs=1e-9)


def test_split_accuracy_cifar100_split_means() -> None:
    acc = np.arange(100, dtype=float)  # class i has accuracy i
    out = split_accuracy(acc, CIFAR100_B100)  # 35 / 35 / 30 classes (counts descending)
    want = {"many": np.mean(range(35)), "medium": np.mean(range(35, 70)), "few": np.mean(range(70, 100))}
    assert out == pytest.approx(want)


def test_split_accuracy_index_ranges_compatibility() -> None:
    """Reference CIFAR-10 ranges 3/4/3 over classes sorted by count, here in shuffled order."""
    perm = np.random.default_rng(9).permutation(10)
    counts = np.empty(10, dtype=int)
    counts[perm] = CIFAR10_B100
    acc = np.random.default_rng(10).uniform(0, 100, size=10)
    out = split_accuracy(acc, counts, index_ranges=(3, 4))
    assert out["many"] == pytest.approx(acc[perm[:3]].mean())
    assert out["medium"] == pytest.approx(acc[perm[3:7]].mean())
    assert out["few"] == pytest.approx(acc[perm[7:]].mean())


def test_split_accuracy_skips_classes_without_eval_samples() -> None:
    acc = np.array([80.0, np.nan, 40.0, np.nan])
    out = split_accuracy(acc, [500, 300, 50, 10])
    assert out == {"many": 80.0, "medium": 40.0, "few": None}


# ---------------------------------------------------------------- evaluate_logits


def test_evaluate_logits_end_to_end() -> None:
    g = torch.Generator().manual_seed(11)
    k, per_class = 10, 30
    labels = torch.arange(k).repeat_interleave(per_class)
    logits = torch.randn(k * per_class, k, generator=g) * 2
    logits[torch.arange(k * per_class), labels] += torch.linspace(3, 0, k).repeat_interleave(per_class)
    res = evaluate_logits(logits, labels, CIFAR10_B100)

    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).tolist()
    assert res.acc == pytest.approx(100 * sum(correct) / len(correct))
    per_cls = [100 * np.mean(correct[c * per_class : (c + 1) * per_class]) for c in range(k)]
    np.testing.assert_allclose(res.per_class_acc, per_cls)
    assert res.acc == pytest.approx(np.mean(per_cls))  # balanced eval set
    assert res.acc_many == pytest.approx(np.mean(per_cls[:8]))
    assert res.acc_medium == pytest.approx(np.mean(per_cls[8:]))
    assert res.acc_few is None
    want_ece, want_mce = _loop_ece_mce(conf.tolist(), correct)
    assert res.ece == pytest.approx(100 * want_ece, abs=1e-4)
    assert res.mce == pytest.approx(100 * want_mce, abs=1e-4)
    assert res.nll == pytest.approx(F.cross_entropy(logits.double(), labels).item(), rel=1e-5)
    assert res.num_samples == 300 and len(res.reliability) == 15

    summary = res.summary()
    assert set(summary) == {"acc", "acc_many", "acc_medium", "acc_few", "ece", "mce", "nll"}
    assert json.loads(json.dumps(summary))["acc_few"] is None


def test_evaluate_logits_validation() -> None:
    logits = torch.zeros(4, 10)
    with pytest.raises(ValueError, match="train_counts"):
        evaluate_logits(logits, torch.tensor([0, 1, 2, 3]), CIFAR10_B100[:9])
    with pytest.raises(ValueError, match="labels"):
        evaluate_logits(logits, torch.tensor([0, 1, 2]), CIFAR10_B100)
    with pytest.raises(ValueError, match="logits"):
        evaluate_logits(torch.zeros(4), torch.tensor([0, 1, 2, 3]), CIFAR10_B100)
