"""Paired differences: t intervals by hand, resampled metrics against mislas.metrics, pairing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mislas.metrics import ece_mce
from study.reporting.paired import paired_table, resampled_metrics, seed_interval, t_quantile


def test_seed_interval_by_hand() -> None:
    mean, lo, hi = seed_interval([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303: half width 4.303 / √3
    assert mean == 2.0 and lo == pytest.approx(2.0 - 4.303 / math.sqrt(3)) and hi == pytest.approx(2.0 + 4.303 / math.sqrt(3))
    assert math.isnan(seed_interval([1.5])[1]) and seed_interval([1.5])[0] == 1.5
    assert t_quantile(1) == 12.706 and t_quantile(12) == 2.228 and t_quantile(100) == 1.96


def test_resampled_metrics_match_the_studys_definitions() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    conf = rng.uniform(0.0, 1.0, n)
    conf[:5] = [0.0, 1.0, 1 / 15, 2 / 15, 0.5]  # bin edges: a confidence of 0 in bin 0, (lo, hi] bins
    correct = rng.uniform(size=n) < conf
    nll = rng.exponential(size=n)
    idx = np.vstack([np.arange(n), rng.integers(0, n, n)])
    got = resampled_metrics(correct, conf, nll, idx, 15)
    for row in range(2):
        sel = idx[row]
        ece, _ = ece_mce(conf[sel], correct[sel], n_bins=15)
        assert got["test_ece"][row] == pytest.approx(100.0 * ece, abs=1e-9)
        assert got["test_acc"][row] == pytest.approx(100.0 * correct[sel].mean())
        assert got["test_nll"][row] == pytest.approx(nll[sel].mean())


def _rows(trial_id: str, seed: int, correct: np.ndarray, conf: np.ndarray, nll: np.ndarray) -> tuple[dict, pd.DataFrame]:
    ece, _ = ece_mce(conf, correct, n_bins=15)
    trial = {"trial_id": trial_id, "seed": seed, "test_acc": 100.0 * correct.mean(), "test_ece": 100.0 * ece,
             "test_nll": float(nll.mean())}
    preds = pd.DataFrame({"trial_id": trial_id, "eval_split": "test", "sample": np.arange(len(conf)),
                          "correct": correct, "confidence": conf, "nll": nll})
    return trial, preds


def test_paired_table_pairs_by_seed_and_resamples_the_same_images() -> None:
    rng = np.random.default_rng(1)
    n = 500
    trials, preds = [], []
    for seed in (0, 1, 2):
        conf = rng.uniform(0.3, 1.0, n)
        correct = rng.uniform(size=n) < conf
        nll = rng.exponential(size=n)
        better = correct | (rng.uniform(size=n) < 0.1)  # B: right wherever A is, and on 10 % more images
        for tid, c in ((f"a{seed}", correct), (f"b{seed}", better), (f"c{seed}", correct)):
            t, p = _rows(tid, seed, c, conf, nll)
            trials.append(t)
            preds.append(p)
    table = paired_table(pd.DataFrame(trials), pd.concat(preds), {"A": ["a0", "a1", "a2"], "B": ["b0", "b1", "b2"],
                                                                   "C (= A)": ["c0", "c1", "c2"]}, "A", n_boot=200)
    assert table is not None and list(table.stats.index) == ["B", "C (= A)"]
    frame = pd.DataFrame(trials).set_index("trial_id")
    diffs = [frame.loc[f"b{s}", "test_acc"] - frame.loc[f"a{s}", "test_acc"] for s in (0, 1, 2)]
    b = table.stats.loc["B"]
    assert b["n_seeds"] == 3 and b["Acc_mean"] == pytest.approx(np.mean(diffs))
    assert b["Acc_boot_lo"] > 0.0 and b["Acc_boot_lo"] <= np.mean(diffs) <= b["Acc_boot_hi"]  # never worse on any image
    same = table.stats.loc["C (= A)"]
    for m in ("Acc", "ECE", "NLL"):  # identical predictions: zero on every seed and every resample
        assert same[f"{m}_mean"] == 0.0 and same[f"{m}_boot_lo"] == 0.0 and same[f"{m}_boot_hi"] == 0.0


def test_paired_table_without_predictions_gives_seed_intervals_only() -> None:
    trials = pd.DataFrame([{"trial_id": "a", "seed": 0, "test_acc": 50.0, "test_ece": 5.0, "test_nll": 1.0},
                           {"trial_id": "b", "seed": 0, "test_acc": 52.0, "test_ece": 4.0, "test_nll": 0.9}])
    empty = pd.DataFrame(columns=["trial_id", "eval_split", "sample", "correct", "confidence", "nll"])
    table = paired_table(trials, empty, {"A": ["a"], "B": ["b"]}, "A")
    assert table is not None
    row = table.stats.loc["B"]
    assert row["Acc_mean"] == 2.0 and math.isnan(row["Acc_lo"]) and math.isnan(row["Acc_boot_lo"])
    assert paired_table(trials, empty, {"B": ["b"]}, "A") is None
