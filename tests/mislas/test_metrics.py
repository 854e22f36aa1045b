"""Metrics checked against independent computations and hand-worked numbers."""

from __future__ import annotations

import doctest
import json
import math
import types
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mislas.metrics as metrics
from mislas import spec, splits
from mislas.metrics import (
    adaptive_ece,
    brier_score,
    classifier_weight_norms,
    classwise_ece,
    confidence_by_split,
    ece_mce,
    evaluate_logits,
    nll,
    per_class_accuracy,
    reliability_bins,
    split_accuracy,
    split_ece,
)
from mislas.spec import SplitRule

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


@pytest.mark.parametrize("module", [metrics.binned, metrics.by_split, metrics.scores, metrics.result, spec, splits])
def test_module_doctests_pass(module: types.ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.failed == 0
    if module in (metrics.binned, metrics.by_split, spec, splits):
        assert result.attempted > 0


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
    out = split_accuracy(acc, counts, SplitRule(index_ranges=(3, 4)))
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
    assert set(summary) == {
        "acc", "acc_many", "acc_medium", "acc_few", "ece", "mce", "nll",
        "classwise_ece", "adaptive_ece", "brier", "ece_many", "ece_medium", "ece_few",
    }  # fmt: skip
    assert json.loads(json.dumps(summary))["acc_few"] is None
    assert json.loads(json.dumps(summary))["ece_few"] is None


def test_evaluate_logits_validation() -> None:
    logits = torch.zeros(4, 10)
    with pytest.raises(ValueError, match="train_counts"):
        evaluate_logits(logits, torch.tensor([0, 1, 2, 3]), CIFAR10_B100[:9])
    with pytest.raises(ValueError, match="labels"):
        evaluate_logits(logits, torch.tensor([0, 1, 2]), CIFAR10_B100)
    with pytest.raises(ValueError, match="logits"):
        evaluate_logits(torch.zeros(4), torch.tensor([0, 1, 2, 3]), CIFAR10_B100)


# ---------------------------------------------------------------- classwise / adaptive / Brier / per split
# Every reference below is a plain float64 loop written here, not a call into mislas.metrics.


def _loop_bin(c: float, n_bins: int) -> int:
    return max(math.ceil(c * n_bins) - 1, 0)  # right-closed (b/n, (b+1)/n], 0 -> bin 0


def _loop_classwise_ece(probs: list[list[float]], labels: list[int], n_bins: int = 15) -> float:
    n, k = len(probs), len(probs[0])
    per_class = []
    for cls in range(k):
        members: dict[int, list[tuple[float, float]]] = {}
        for row, y in zip(probs, labels):
            members.setdefault(_loop_bin(row[cls], n_bins), []).append((row[cls], 1.0 if y == cls else 0.0))
        ece_k = 0.0
        for items in members.values():
            mean_p = math.fsum(p for p, _ in items) / len(items)
            freq = math.fsum(h for _, h in items) / len(items)
            ece_k += len(items) / n * abs(freq - mean_p)
        per_class.append(ece_k)
    return math.fsum(per_class) / k


def _loop_adaptive_ece(conf: list[float], correct: list[bool], n_bins: int = 15) -> float:
    order = np.argsort(np.asarray(conf), kind="stable")
    total = 0.0
    for group in np.array_split(order, n_bins):
        if len(group) == 0:
            continue
        c = math.fsum(conf[i] for i in group) / len(group)
        a = math.fsum(1.0 if correct[i] else 0.0 for i in group) / len(group)
        total += len(group) / len(conf) * abs(a - c)
    return total


def _loop_brier(probs: list[list[float]], labels: list[int]) -> float:
    return math.fsum(
        math.fsum((p - (1.0 if cls == y else 0.0)) ** 2 for cls, p in enumerate(row)) for row, y in zip(probs, labels)
    ) / len(probs)


def _loop_split_classes(counts: list[int]) -> dict[str, set[int]]:
    return {
        "many": {c for c, n in enumerate(counts) if n > 100},
        "medium": {c for c, n in enumerate(counts) if 20 <= n <= 100},
        "few": {c for c, n in enumerate(counts) if n < 20},
    }


def _random_probs(seed: int, n: int, k: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, scale, size=(n, k))
    logits[np.arange(n), rng.integers(0, k, size=n)] += 2.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)  # drawn from p, so p is near calibrated
    return p, labels


@pytest.mark.parametrize(("seed", "k", "n_bins"), [(0, 5, 15), (1, 10, 15), (2, 3, 7)])
def test_classwise_ece_matches_independent_loop(seed: int, k: int, n_bins: int) -> None:
    p, labels = _random_probs(seed, 400, k)
    want = _loop_classwise_ece(p.tolist(), labels.tolist(), n_bins)
    assert classwise_ece(p, labels, n_bins=n_bins) == pytest.approx(want, abs=1e-12)
    assert classwise_ece(torch.tensor(p), torch.tensor(labels), n_bins=n_bins) == pytest.approx(want, abs=1e-12)


def test_classwise_ece_bin_edges_and_never_predicted_class() -> None:
    # Class 2 is never predicted and never a label; 10/15, 4/15 and 1/15 sit on bin edges.
    probs = [[10 / 15, 4 / 15, 1 / 15], [0.7, 0.25, 0.05], [0.3, 0.65, 0.05]]
    labels = [0, 1, 0]
    # class 0: 10/15 -> bin 9 (hit), 0.7 -> bin 10 (no hit), 0.3 -> bin 4 (hit): singletons
    e0 = abs(1 - 10 / 15) + abs(0 - 0.7) + abs(1 - 0.3)
    # class 1: 4/15 (no hit) and 0.25 (hit) share (3/15, 4/15]; 0.65 -> bin 9 (no hit)
    e1 = abs(1 - (4 / 15 + 0.25)) + abs(0 - 0.65)
    # class 2: 1/15 is in (0, 1/15] with both 0.05: no hit
    e2 = abs(0 - (1 / 15 + 0.05 + 0.05))
    want = (e0 + e1 + e2) / 3 / 3  # n_b/N·|freq − mean p| = |Σ hit − Σ p|/N, then mean over K = 3
    assert classwise_ece(probs, labels) == pytest.approx(want, abs=1e-12)
    assert classwise_ece(probs, labels) == pytest.approx(_loop_classwise_ece(probs, labels), abs=1e-12)
    # left-closed bins would give (|1 − 10/15 − 0.7| + 0.7 + 4/15 + 0.75 + 0.65 + 1/15 + 0.1)/9: must differ
    assert abs(want - (abs(1 - 10 / 15 - 0.7) + 0.7 + 4 / 15 + 0.75 + 0.65 + 1 / 15 + 0.1) / 9) > 0.01
    # one bin: ECE_k = |Σ 1[y = k] − Σ p_k| / N
    one = (abs(2 - (10 / 15 + 0.7 + 0.3)) + abs(1 - (4 / 15 + 0.25 + 0.65)) + abs(0 - (1 / 15 + 0.1))) / 3 / 3
    assert classwise_ece(probs, labels, n_bins=1) == pytest.approx(one, abs=1e-12)


def test_classwise_ece_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    p, labels = _random_probs(3, 257, 6)
    whole = classwise_ece(p, labels)
    monkeypatch.setattr(metrics.inputs, "_CHUNK_CELLS", 7 * 6)  # 7 rows per chunk, last chunk short
    assert classwise_ece(p, labels) == pytest.approx(whole, abs=1e-14)
    assert brier_score(p, labels) == pytest.approx(_loop_brier(p.tolist(), labels.tolist()), abs=1e-12)


@pytest.mark.parametrize(("seed", "n", "n_bins"), [(0, 1000, 15), (1, 997, 15), (2, 50, 7), (3, 16, 15)])
def test_adaptive_ece_matches_array_split_loop(seed: int, n: int, n_bins: int) -> None:
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 2, size=n)
    conf[: n // 10] = np.round(conf[: n // 10], 1)  # ties, split across groups in input order
    correct = rng.random(n) < conf**1.5
    want = _loop_adaptive_ece(conf.tolist(), correct.tolist(), n_bins)
    assert adaptive_ece(conf, correct, n_bins=n_bins) == pytest.approx(want, abs=1e-12)
    assert adaptive_ece(torch.tensor(conf), torch.tensor(correct), n_bins=n_bins) == pytest.approx(want, abs=1e-12)


def test_adaptive_ece_fewer_samples_than_bins_and_ties() -> None:
    # N = 3 < 15: three groups of one sample, 12 empty groups skipped: mean |correct − conf|
    assert adaptive_ece([0.9, 0.2, 0.6], [True, True, False]) == pytest.approx((0.1 + 0.8 + 0.6) / 3, abs=1e-12)
    assert adaptive_ece([0.7], [True]) == pytest.approx(0.3, abs=1e-12)
    # all tied: the stable sort keeps input order, so [1, 1 | 0, 0] -> gaps 0.5 and 0.5
    assert adaptive_ece([0.5] * 4, [1, 1, 0, 0], n_bins=2) == pytest.approx(0.5, abs=1e-12)
    assert adaptive_ece([0.5] * 4, [1, 0, 1, 0], n_bins=2) == pytest.approx(0.0, abs=1e-12)
    # 7 samples in 3 groups: array_split sizes 3, 2, 2
    conf = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    ok = [0, 0, 1, 1, 1, 0, 1]
    want = (abs(1 / 3 - 0.2) * 3 + abs(1.0 - 0.45) * 2 + abs(0.5 - 0.65) * 2) / 7
    assert adaptive_ece(conf, ok, n_bins=3) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_brier_matches_independent_loop(seed: int) -> None:
    p, labels = _random_probs(seed, 300, 8)
    want = _loop_brier(p.tolist(), labels.tolist())
    assert brier_score(p, labels) == pytest.approx(want, abs=1e-12)
    # perfect one-hot predictions score 0, uniform over K scores 1 − 1/K, confidently wrong 2
    assert brier_score(np.eye(4), [0, 1, 2, 3]) == 0.0
    assert brier_score(np.full((3, 4), 0.25), [0, 1, 3]) == pytest.approx(0.75, abs=1e-15)
    assert brier_score(np.eye(3), [1, 2, 0]) == pytest.approx(2.0, abs=1e-15)


def test_split_ece_matches_loop_on_true_label_subsets() -> None:
    counts, truth = _places_style_counts()
    rng = np.random.default_rng(12)
    n = 3000
    labels = rng.integers(0, 365, size=n)
    conf = rng.beta(4, 2, size=n)
    conf[:16] = np.arange(16) / 15  # bin edges, 0 and 1
    correct = rng.random(n) < conf
    got = split_ece(conf, correct, labels, counts)
    by_split = _loop_split_classes(counts.tolist())
    for name in ("many", "medium", "few"):
        assert by_split[name] == set(truth[name].tolist())
        idx = [i for i in range(n) if int(labels[i]) in by_split[name]]
        want = _loop_ece_mce([float(conf[i]) for i in idx], [bool(correct[i]) for i in idx])[0]
        assert got[name] == pytest.approx(want, abs=1e-12)


def test_split_ece_none_for_missing_split_or_samples() -> None:
    # CIFAR-10 β=100 has no Few class; Medium (classes 8, 9) has classes but no sample here
    conf = [0.9, 0.8, 0.7]
    out = split_ece(conf, [1, 0, 1], [0, 3, 7], CIFAR10_B100)
    assert out["few"] is None and out["medium"] is None
    assert out["many"] == pytest.approx(_loop_ece_mce(conf, [True, False, True])[0], abs=1e-12)
    with pytest.raises(ValueError, match="labels"):
        split_ece(conf, [1, 0, 1], [0, 3, 10], CIFAR10_B100)


def test_confidence_by_split_quantiles() -> None:
    rng = np.random.default_rng(13)
    counts = [500, 300, 60, 30, 10, 5]  # classes 0, 1 Many; 2, 3 Medium; 4, 5 Few
    labels = rng.integers(0, 6, size=500)
    conf = rng.uniform(0.2, 1.0, size=500)
    out = confidence_by_split(conf, labels, counts)
    for name, classes in (("many", (0, 1)), ("medium", (2, 3)), ("few", (4, 5))):
        vals = sorted(float(conf[i]) for i in range(500) if labels[i] in classes)
        entry = out[name]
        assert entry is not None
        assert entry["count"] == len(vals)
        assert entry["mean"] == pytest.approx(math.fsum(vals) / len(vals), abs=1e-12)
        for key, q in (("q05", 0.05), ("q25", 0.25), ("q50", 0.5), ("q75", 0.75), ("q95", 0.95)):
            pos = q * (len(vals) - 1)  # linear interpolation between order statistics
            lo = math.floor(pos)
            want = vals[lo] + (pos - lo) * (vals[min(lo + 1, len(vals) - 1)] - vals[lo])
            assert entry[key] == pytest.approx(want, abs=1e-12)
    assert confidence_by_split([0.5], [0], CIFAR10_B100)["few"] is None


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        ([[2.0, -1.0], [0.5, 0.5]], [0, 1], r"\[0, 1\]"),
        ([[0.6, 0.6], [0.5, 0.5]], [0, 1], "sum to 1"),
        ([[0.5, 0.5], [0.5, 0.5]], [0, 2], "labels"),
        ([[0.5, 0.5], [0.5, 0.5]], [0.0, 1.0], "integer"),
        ([[0.5, 0.5]], [0, 1], "labels"),
        (np.zeros((0, 3)), [], "at least one"),
        ([0.5, 0.5], [0], "shape"),
        ([[0.5, float("nan")], [0.5, 0.5]], [0, 1], r"\[0, 1\]"),
    ],
)
def test_probs_input_validation(probs: Any, labels: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classwise_ece(probs, labels)
    with pytest.raises(ValueError, match=match):
        brier_score(probs, labels)


def test_adaptive_ece_input_validation() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        adaptive_ece([], [])
    with pytest.raises(ValueError, match="n_bins"):
        adaptive_ece([0.5], [1], n_bins=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adaptive_ece([1.5], [1])


def test_evaluate_logits_new_calibration_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """New EvalResult fields against loops on a float64 softmax; ECE variants in percent, Brier raw."""
    g = torch.Generator().manual_seed(14)
    counts = [500, 300, 150, 100, 60, 20, 19, 8]  # Many 0-2, Medium 3-5, Few 6-7
    k, per_class = len(counts), 40
    labels = torch.arange(k).repeat_interleave(per_class)
    logits = torch.randn(k * per_class, k, generator=g) * 2
    logits[torch.arange(k * per_class), labels] += torch.linspace(3, 0, k).repeat_interleave(per_class)
    monkeypatch.setattr(metrics.inputs, "_CHUNK_CELLS", 13 * k)  # exercise the row chunks
    res = evaluate_logits(logits, labels, counts)

    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(dim=1)
    p_list, y_list = probs.tolist(), labels.tolist()
    correct = (pred == labels).tolist()
    assert res.classwise_ece == pytest.approx(100 * _loop_classwise_ece(p_list, y_list), abs=1e-9)
    assert res.brier == pytest.approx(_loop_brier(p_list, y_list), abs=1e-12)
    assert res.adaptive_ece == pytest.approx(100 * _loop_adaptive_ece(conf.tolist(), correct), abs=1e-4)
    for name, classes in (("many", range(0, 3)), ("medium", range(3, 6)), ("few", range(6, 8))):
        idx = [i for i, y in enumerate(y_list) if y in classes]
        want = _loop_ece_mce([conf[i].item() for i in idx], [correct[i] for i in idx])[0]
        assert getattr(res, f"ece_{name}") == pytest.approx(100 * want, abs=1e-4)
        entry = res.confidence_quantiles[name]
        assert entry is not None and entry["count"] == len(idx)
        assert entry["q50"] == pytest.approx(float(np.median(conf[idx].numpy())), abs=1e-6)
    summary = res.summary()
    assert summary["brier"] == res.brier and summary["ece_few"] == res.ece_few
    assert json.loads(json.dumps(res.confidence_quantiles))["few"]["count"] == 2 * per_class

    # without the monkeypatched chunk size: same numbers
    monkeypatch.undo()
    again = evaluate_logits(logits, labels, counts)
    assert again.classwise_ece == pytest.approx(res.classwise_ece, abs=1e-12)
    assert again.brier == pytest.approx(res.brier, abs=1e-12)
