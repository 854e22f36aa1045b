"""Driver-side Tune callback: each trial that ends is written to Parquet at once.

``on_trial_complete`` (complete or stopped early) and ``on_trial_error`` (failed after its
retries) build the trial's row from its config, its last result and the files of its last
checkpoint (see study.trainable), write ``parts/<trial_id>/`` (trials.parquet last) and
rewrite the union tables atomically. A part is written once: a trial reported again after a
resume leaves its rows untouched.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from ray import tune

from study import results
from study.storage import Store
from study.groups import member_config, member_id, member_result
from study.trainable import FINAL, META, STAGE2_KNOBS


@dataclass(frozen=True)
class RecordContext:
    study: str
    results_location: str
    budget: str
    imb_factors: dict[str, float | None]  # per data set, as run
    epochs_planned: dict[str, dict[str, int]]  # data set -> method -> Stage-2 epochs
    provenance: dict[str, str]  # the driver's versions (fallback when a trial left no meta)
    git_commit: str | None
    optuna_local: str | None = None  # local Optuna journal to upload after each trial (remote storage)


def _checkpoint_files(trial: Any, sub: str | None = None) -> dict[str, Any]:
    """meta.json, final.json and the Parquet tables of the trial's last checkpoint (of its
    folder ``sub`` for a member of a group)."""
    out: dict[str, Any] = {}
    ckpt = trial.checkpoint
    if ckpt is None:
        return out
    with ckpt.as_directory() as folder:
        folder = Path(folder) / sub if sub else Path(folder)
        for name in (META, FINAL):
            if (folder / name).exists():
                out[name] = json.loads((folder / name).read_text())
        for name in ("epochs", "classes", "reliability"):
            if (folder / f"{name}.parquet").exists():
                out[name] = pq.read_table(folder / f"{name}.parquet")
    return out


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _error_text(trial: Any) -> str:
    try:
        text = trial.get_error() or ""
    except Exception:  # the error file may be gone
        text = ""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed")[:2000]


def build_trial_row(ctx: RecordContext, trial_id: str, config: dict[str, Any], last: dict[str, Any],
                    files: dict[str, Any], *, error: str | None) -> dict[str, Any]:
    meta = files.get(META, {})
    final = files.get(FINAL)
    dataset, method = config["dataset"], config["method"]
    planned = meta.get("epochs_planned", ctx.epochs_planned.get(dataset, {}).get(method))
    if error is None and final is not None and final.get("error"):
        error = final["error"]  # diverged: ended by the trial itself, recorded as failed
    if error is not None:
        status = "failed"
    elif final is not None or int(last.get("final", 0) or 0) == 1:
        status = "complete"
    else:
        status = "stopped_early"
    epochs_tbl = files.get("epochs")
    if final is not None:
        epochs_run = final["epochs_run"]
        metrics = final["metrics"]
    else:
        epochs_run = epochs_tbl.num_rows if epochs_tbl is not None else int(last.get("epoch", 0) or 0)
        metrics = last
    s1 = meta.get("stage1_metrics", {})
    row: dict[str, Any] = {
        "trial_id": trial_id, "study": ctx.study, "dataset": dataset, "imb_factor": ctx.imb_factors.get(dataset),
        "arch": meta.get("arch"), "method": method, "mixup": bool(config.get("mixup")), "seed": int(config["seed"]),
        "is_paper_setting": bool(config.get("is_paper_setting")),
        "group_id": config.get("group_id"), "group_size": int(config.get("group_size") or 1),
        **({k: config.get(k) for k in STAGE2_KNOBS} if method == "mislas" else {}),
        "tau": (final or {}).get("tau"), "epochs_planned": planned, "epochs_run": epochs_run, "status": status,
        **{f"val_{m}": _num(metrics.get(f"val_{m}")) for m in results.METRICS},
        **{f"test_{m}": _num(metrics.get(f"test_{m}")) for m in results.METRICS},
        "stage1_key": meta.get("stage1_key"),
        "stage1_val_acc": _num(s1.get("val", {}).get("acc")), "stage1_test_acc": _num(s1.get("test", {}).get("acc")),
        "stage1_test_ece": _num(s1.get("test", {}).get("ece")),
        "stage1_trained": meta.get("stage1_trained"), "stage1_s": meta.get("stage1_s"),
        "stage2_s": (final or {}).get("stage2_s"),
        "wall_s": (final or {}).get("wall_s") or _wall_from_epochs(epochs_tbl),
        "started_at": _ts(meta.get("started_at")),
        "finished_at": _ts((final or {}).get("finished_at")) or datetime.now(timezone.utc),
        "error": error, "budget": ctx.budget,
        "optuna_study": config.get("optuna_study"), "optuna_trial_number": config.get("optuna_trial_number"),
        "data_fingerprint": meta.get("data_fingerprint"), "config_json": meta.get("config_json"),
        **{k: meta.get(k, v) for k, v in ctx.provenance.items()},
        "git_commit": meta.get("git_commit", ctx.git_commit), "device_name": meta.get("device_name"),
        "hostname": meta.get("hostname"),
    }
    if method == "mislas" and config.get("form") != "exp":
        row["p"] = None
    return row


def _wall_from_epochs(tbl: Any) -> float | None:
    if tbl is None or tbl.num_rows == 0:
        return None
    return float(tbl.column("wall_s")[-1].as_py())


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class ResultsCallback(tune.Callback):
    """Write each ended trial to ``<storage>/<name>/parts/<trial_id>/`` and refresh the unions."""

    def __init__(self, ctx: RecordContext) -> None:
        self.ctx = ctx

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.record(trial, error=None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.record(trial, error=_error_text(trial))

    def record(self, trial: Any, *, error: str | None) -> bool:
        store = Store(self.ctx.results_location)
        if results.part_complete(store, trial.trial_id):
            return False
        last = dict(trial.last_result or {})
        if error is None and not last.get("done"):
            # Ended without finishing, without an error and without a scheduler STOP (which
            # marks the last result done): the experiment was interrupted (Ctrl-C) or the trial
            # never ran. It stays unfinished; a resume continues it.
            return False
        config = dict(trial.config)
        if config.get("members"):
            return self._record_group(store, trial, config, last, error=error)
        try:
            files = _checkpoint_files(trial)
        except Exception as exc:  # an unreadable checkpoint must not lose the row
            print(f"[study] trial {trial.trial_id}: cannot read its checkpoint ({exc})", file=sys.stderr)
            files = {}
        return write_trial(store, self.ctx, trial.trial_id, config, last, files, error=error)

    def _record_group(self, store: Store, trial: Any, config: dict[str, Any], last: dict[str, Any], *,
                      error: str | None) -> bool:
        """A group's members, each its own part (row id ``<group_id>-g<k>``); then the unions once.

        A member whose part is complete is left as it is, so a group recorded in part before a
        crash gets only its missing members written on resume.
        """
        wrote = False
        for k in range(len(config["members"])):
            mid = member_id(trial.trial_id, k)
            if results.part_complete(store, mid):
                continue
            try:
                files = _checkpoint_files(trial, f"g{k}")
            except Exception as exc:
                print(f"[study] trial {mid}: cannot read its checkpoint ({exc})", file=sys.stderr)
                files = {}
            mlast = member_result(last, k) or {}
            wrote |= write_trial(store, self.ctx, mid, member_config(config, k), mlast, files, error=error,
                                 rebuild=False)
        if wrote:
            results.rebuild_unions(store)
            if self.ctx.optuna_local and Path(self.ctx.optuna_local).exists():
                store.upload(Path(self.ctx.optuna_local), "optuna.log")
        return wrote


def write_trial(store: Store, ctx: RecordContext, trial_id: str, config: dict[str, Any], last: dict[str, Any],
                files: dict[str, Any], *, error: str | None, rebuild: bool = True) -> bool:
    row = build_trial_row(ctx, trial_id, config, last, files, error=error)
    tables = {"trials": results.table("trials", [row])}
    for name in ("epochs", "classes", "reliability"):
        if name in files:
            tables[name] = files[name]
    written = results.write_part(store, trial_id, tables)
    if written:
        if rebuild:
            results.rebuild_unions(store)
            if ctx.optuna_local and Path(ctx.optuna_local).exists():
                store.upload(Path(ctx.optuna_local), "optuna.log")
        val = row.get("val_acc")
        print(f"[study] {trial_id} {row['dataset']} {row['method']} seed {row['seed']}: {row['status']}"
              + (f", val acc {val:.2f}" if val is not None else "") + f" -> {store.uri(results.PARTS, trial_id)}",
              file=sys.stderr, flush=True)
    return written

