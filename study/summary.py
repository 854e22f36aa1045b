"""The summary a finished (or interrupted) study prints and writes to ``summary.json``.

Its numbers are computed as the report computes them (the Pareto front is
:func:`study.pareto.pareto_mask`, which the report uses too), from the trials table the report reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from study import schema
from study.pareto import pareto_mask
from study.records import Stage2Setting
from study.settings import StudySettings


def _setting(row: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {"trial_id": row["trial_id"], "val_acc": float(row["val_acc"]),
                           "val_ece": None if pd.isna(row["val_ece"]) else float(row["val_ece"]),
                           "seed": int(row["seed"])}
    for name in Stage2Setting.names():
        value = row.get(name)
        out[name] = None if value is None or (isinstance(value, float) and np.isnan(value)) else (
            value.item() if hasattr(value, "item") else value)
    return out


def summarize(s: StudySettings, trials: pd.DataFrame, *, results_uri: str, timings: dict[str, float]) -> dict[str, Any]:
    """Counts, best settings on validation, the Pareto front size, Table 6 and baselines, timings."""
    df = trials
    status = df["status"] if len(df) else pd.Series(dtype=object)
    out: dict[str, Any] = {
        "study": s.name, "results": results_uri, "trials_parquet": f"{results_uri}/trials.parquet",
        "optuna_journal": f"{results_uri}/optuna.log",
        "trials": {"total": int(len(df)), "finished": int((status == schema.COMPLETE).sum()),
                   "stopped_early": int((status == schema.STOPPED_EARLY).sum()),
                   "failed": int((status == schema.FAILED).sum()),
                   "diverged": int((status == schema.DIVERGED).sum()), "planned": s.planned_trials()},
        "datasets": {}, "timings": dict(timings), "group_size": s.group_size, "scheduler": s.scheduler,
    }
    # Stage 1s trained by this run's Stage-1 phase, plus any a trial trained itself (an entry
    # gone since the phase); the time trials spent getting a Stage 1 they did not train
    phase_trainings = int(timings.get("stage1_phase_trainings", 0))
    phase_train_s = float(timings.get("stage1_phase_train_s", 0.0))
    out["timings"].update({"stage1_trainings": phase_trainings, "stage1_train_s": phase_train_s})
    if len(df):
        trained = df["stage1_trained"].fillna(False).astype(bool)
        out["timings"].update({
            "stage1_trainings": phase_trainings + int(trained.sum()),
            "stage1_train_s": phase_train_s + float(df.loc[trained, "stage1_s"].fillna(0).sum()),
            "stage1_wait_trial_s": float(df.loc[~trained, "stage1_s"].fillna(0).sum()),
            "stage2_trial_s": float(df["stage2_s"].fillna(0).sum()),
        })
    for d in s.datasets:
        sub = df[df["dataset"] == d] if len(df) else df
        entry: dict[str, Any] = {}
        searched = sub["variant"].isna() if len(sub) else None  # ablation rows are fixed, not searched
        done = sub[(sub["status"] == schema.COMPLETE) & (sub["method"] == "mislas") & searched] if len(sub) else sub
        if len(done):
            entry["best_val_acc"] = _setting(done.loc[done["val_acc"].idxmax()])
            eced = done.dropna(subset=["val_ece"])
            if len(eced):
                entry["best_val_ece"] = _setting(eced.loc[eced["val_ece"].idxmin()])
                mask = pareto_mask(eced["val_acc"].to_numpy(float), eced["val_ece"].to_numpy(float))
                entry["pareto_front_size"] = int(mask.sum())
                entry["pareto_trial_ids"] = eced.loc[mask, "trial_id"].tolist()
            paper = done[done["is_paper_setting"].fillna(False).astype(bool)]
            if len(paper):
                entry["table6_val_acc_mean"] = float(paper["val_acc"].mean())
                entry["table6_val_ece_mean"] = float(paper["val_ece"].mean())
        base = sub[(sub["method"] != "mislas") & (sub["status"] == schema.COMPLETE)] if len(sub) else sub
        if len(base):
            entry["baselines_val_acc"] = {
                f"{m}{'+mixup' if mix else ''}{'' if bn or m not in ('crt', 'lws') else ' (BN eval)'}":
                    float(g["val_acc"].mean())
                for (m, mix, bn), g in base.groupby(["method", "mixup", base["shift_bn"].fillna(False)])}
        ablation = sub[sub["variant"].notna() & (sub["variant"].astype(object) != schema.CONFIRM_VARIANT)
                       & (sub["status"] == schema.COMPLETE)] if len(sub) else sub
        if len(ablation):
            entry["ablation_test_acc"] = {str(v): float(g["test_acc"].mean()) for v, g in ablation.groupby("variant")}
        out["datasets"][d] = entry
    return out


def _fmt(b: dict[str, Any]) -> str:
    setting = Stage2Setting.from_params(b)
    return f"{setting.describe()}, seed={b['seed']}"


def format_summary(summary: dict[str, Any]) -> str:
    """Format the study summary as the text the driver prints at the end."""
    t = summary["trials"]
    lines = [f"\n== study {summary['study']}: {t['total']} trials ({t['finished']} complete, "
             f"{t['stopped_early']} stopped early by ASHA, {t['failed']} failed, {t['diverged']} diverged) =="]
    for d, e in summary["datasets"].items():
        if "best_val_acc" in e:
            b = e["best_val_acc"]
            lines.append(f"{d}: best val acc {b['val_acc']:.2f} % ({_fmt(b)}) [{b['trial_id']}]")
        if "best_val_ece" in e:
            b = e["best_val_ece"]
            lines.append(f"{d}: best val ECE {b['val_ece']:.2f} % ({_fmt(b)}) [{b['trial_id']}]")
        if "pareto_front_size" in e:
            lines.append(f"{d}: Pareto front (val acc up, val ECE down): {e['pareto_front_size']} trials")
        if "table6_val_acc_mean" in e:
            lines.append(f"{d}: Table 6 setting, mean over seeds: val acc {e['table6_val_acc_mean']:.2f} %, "
                         f"val ECE {e['table6_val_ece_mean']:.2f} %")
        for name, acc in e.get("baselines_val_acc", {}).items():
            lines.append(f"{d}: baseline {name}: val acc {acc:.2f} %")
        if e.get("ablation_test_acc"):
            lines.append(f"{d}: component ablation (test acc, mean over seeds): " + ", ".join(
                f"{v} {a:.2f} %" for v, a in e["ablation_test_acc"].items()))
    if summary.get("group_size", 1) > 1:
        lines.append(f"Stage 2 grouped: up to {summary['group_size']} MiSLAS settings per Tune trial on one backbone "
                     f"pass per batch (each its own row and Optuna trial); scheduler {summary['scheduler']} "
                     f"(ASHA cannot stop one member of a group)")
    tm = summary["timings"]
    lines.append(
        f"time: {tm['total_s']:.1f} s in all; Ray start-up {tm['ray_init_s']:.1f} s; Stage-1 phase "
        f"{tm.get('stage1_phase_s', 0.0):.1f} s; trials {tm['fit_s']:.1f} s "
        f"(Stage 1: {tm.get('stage1_trainings', 0)} training(s), {tm.get('stage1_train_s', 0.0):.1f} s; "
        f"waited for by trials {tm.get('stage1_wait_trial_s', 0.0):.1f} trial-s; "
        f"Stage 2 + eval: {tm.get('stage2_trial_s', 0.0):.1f} trial-s)")
    lines.append(f"results: {summary['results']} (trials.parquet, epochs.parquet, classes.parquet, "
                 f"reliability.parquet, confidence.parquet, summary.json); Optuna journal: {summary['optuna_journal']}")
    lines.append("selection used the validation split only; test metrics are recorded, never used")
    return "\n".join(lines)
