"""Independent expectations for the report tests: which trials each table row should hold.

Written with plain pandas from the raw Parquet, not with the report's helpers (study.reporting),
so that a test compares two separate computations.
"""

from __future__ import annotations

import pandas as pd

METRICS = {"Many": "test_acc_many", "Medium": "test_acc_medium", "Few": "test_acc_few",
           "All": "test_acc", "ECE": "test_ece", "NLL": "test_nll"}
TS_METRICS = {**METRICS, "ECE": "test_ece_ts", "NLL": "test_nll_ts"}  # a "+TS" row's columns
BASELINE_LABELS = {("ce", False): "CE", ("ce", True): "CE+mixup", ("crt", False): "cRT", ("crt", True): "cRT+mixup",
                   ("lws", False): "LWS", ("lws", True): "LWS+mixup", ("tau_norm", False): "τ-norm",
                   ("tau_norm", True): "τ-norm+mixup"}
SETTING = ["mixup", "eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target"]
KEYS = ["dataset", "imb_factor", "arch"]


def searched_mislas(trials: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """Complete MiSLAS trials of the search (and the paper setting): no ablation variant."""
    rows = trials[(trials["method"] == "mislas") & trials["variant"].isna() & (trials["status"] == "complete")]
    return rows if dataset is None else rows[rows["dataset"] == dataset]


def baseline_label(method: str, mixup: bool, shift_bn: object) -> str:
    """cRT / LWS with shift_bn false are "(BN eval)" rows; the rest keep the default label."""
    bn_eval = method in ("crt", "lws") and shift_bn is not None and not pd.isna(shift_bn) and not bool(shift_bn)
    return BASELINE_LABELS[(method, bool(mixup))] + (" (BN eval)" if bn_eval else "")


def ts_label(label: str) -> str:
    """``MiSLAS (paper setting)`` -> ``MiSLAS+TS (paper setting)``, ``CE`` -> ``CE+TS``."""
    return label.replace(" (", "+TS (", 1) if " (" in label else label + "+TS"


def expected_trials(trials: pd.DataFrame, *, ts: bool = False) -> dict[tuple, dict[str, pd.DataFrame]]:
    """Per (dataset, β, arch): comparison row label -> its trials (complete, no ablation variant).
    With ``ts`` also the "+TS" rows: the same trials that carry temperature-scaling values."""
    done = trials[(trials["status"] == "complete") & trials["variant"].isna()].copy()
    done["label"] = [baseline_label(m, x, b) if m != "mislas" else "" for m, x, b
                     in zip(done["method"], done["mixup"], done["shift_bn"].astype(object))]
    chosen: dict[tuple, dict[str, pd.DataFrame]] = {}
    for (ds, beta, arch, label), rows in done[done["method"] != "mislas"].groupby([*KEYS, "label"]):
        chosen.setdefault((ds, beta, arch), {})[label] = rows
    paper = done[(done["method"] == "mislas") & done["is_paper_setting"] & done["mixup"]]
    for key, rows in paper.groupby(KEYS):
        chosen[key]["MiSLAS (paper setting)"] = rows
    mislas = searched_mislas(trials).copy()
    mislas["setting"] = mislas[SETTING].map(repr).agg("|".join, axis=1)
    for key, sub in mislas.groupby(KEYS):
        scores = sub.groupby("setting").agg(acc=("val_acc", "mean"), ece=("val_ece", "mean"))
        best = scores.sort_values(["acc", "ece"], ascending=[False, True]).index[0]
        chosen[key]["MiSLAS (best tuned)"] = sub[sub["setting"] == best]
    if ts:
        for by_label in chosen.values():
            by_label.update({ts_label(label): rows.dropna(subset=["test_ece_ts"])
                             for label, rows in list(by_label.items()) if rows["test_ece_ts"].notna().any()})
    return chosen


def over_seeds(rows: pd.DataFrame, columns: dict[str, str]) -> pd.Series:
    """(name, mean/std/count) over seeds of per-seed means; ``columns``: name -> trials column."""
    cols = list(dict.fromkeys(columns.values()))
    per_seed = rows.groupby("seed")[cols].mean()
    renamed = pd.DataFrame({name: per_seed[c] for name, c in columns.items()})
    return renamed.agg(["mean", "std", "count"]).T.stack()
