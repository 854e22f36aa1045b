"""The study's Parquet tables: row builders, per-trial parts and their unions (schemas: study.schema).

Layout under ``<storage>/<name>/`` (documented in README.md (Results schema), kept in sync):

* ``parts/<trial_id>/{epochs,classes,reliability,trials}.parquet`` -- one finished trial's
  rows, written when it ends. ``trials.parquet`` is written last and is the commit marker: a
  part without it is ignored (and rewritten). A part, once complete, is never rewritten, so
  rows written before a crash stay byte-for-byte unchanged.
* ``trials.parquet``, ``epochs.parquet``, ``classes.parquet``, ``reliability.parquet`` -- the
  union of the complete parts, rewritten atomically (temporary file + rename, or one PUT on
  an object store) after each finished trial.

Only the driver writes here, so there is a single writer.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mislas.atomic import write_atomic
from study.schema import METRICS, PARTS, ROW_TABLES, SCHEMAS, TABLES, TRIALS_SCHEMA, conform, table
from study.storage import Store

__all__ = ["METRICS", "PARTS", "SCHEMAS", "TABLES", "table"]

Floats = Sequence[float] | np.ndarray  # per-class values


# --- builders ------------------------------------------------------------------------------

def epochs_rows(trial_id: str, records: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows from :class:`mislas.stages.EpochRecord` objects (or their dicts)."""
    rows = []
    for rec in records:
        r = rec if isinstance(rec, Mapping) else rec.__dict__
        val = r.get("val") or {}
        rows.append({
            "trial_id": trial_id, "epoch": int(r["epoch"]), "steps": r.get("steps"), "lr": r["lr"],
            "classifier_lr": r["classifier_lr"],
            "train_loss": r["train_loss"], "wall_s": r["wall_s"],
            **{f"val_{m}": val.get(m) for m in METRICS},
        })
    return rows


def classes_rows(trial_id: str, counts: Sequence[int], splits: Mapping[str, Any],
                 test_acc: Floats | None, val_acc: Floats | None,
                 weight_norms: Floats | None, epsilon: Floats | None) -> list[dict[str, Any]]:
    counts_arr = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts_arr, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    split_of = {int(c): name for name, idx in splits.items() for c in idx}

    def at(values: Floats | None, k: int) -> float | None:
        return None if values is None or len(values) == 0 else float(values[k])

    return [
        {"trial_id": trial_id, "class_index": k, "count": int(counts_arr[k]), "rank": int(rank[k]),
         "split": split_of.get(k), "test_acc": at(test_acc, k), "val_acc": at(val_acc, k),
         "weight_norm": at(weight_norms, k), "epsilon": at(epsilon, k)}
        for k in range(counts_arr.size)
    ]


def reliability_rows(trial_id: str, bins_by_split: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for split, bins in bins_by_split.items():
        for b, rec in enumerate(bins):
            rows.append({"trial_id": trial_id, "eval_split": split, "bin": b, "lower": rec["lower"],
                         "upper": rec["upper"], "count": int(rec["count"]), "accuracy": rec.get("accuracy"),
                         "confidence": rec.get("confidence")})
    return rows


def confidence_rows(trial_id: str, by_split: Mapping[str, Mapping[str, Mapping[str, float] | None]]
                    ) -> list[dict[str, Any]]:
    """Rows from ``{eval split: EvalResult.confidence_quantiles}`` (a split with no sample has none)."""
    rows = []
    for eval_split, quantiles in by_split.items():
        for class_split, q in quantiles.items():
            if q is None:
                continue
            rows.append({"trial_id": trial_id, "eval_split": eval_split, "class_split": class_split,
                         "count": int(q.get("count", 0)), "mean": q.get("mean"),
                         **{k: q.get(k) for k in ("q05", "q25", "q50", "q75", "q95")}})
    return rows


# --- Parquet bytes -------------------------------------------------------------------------

def to_parquet_bytes(tbl: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(tbl, buf)
    return buf.getvalue()


def from_parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def write_table_local(tbl: pa.Table, path: Any) -> None:
    """Write a table to a local file atomically."""
    write_atomic(path, to_parquet_bytes(tbl))


def write_table(store: Store, tbl: pa.Table, *parts: str) -> None:
    store.write_bytes(to_parquet_bytes(tbl), *parts)


def read_table(store: Store, *parts: str) -> pa.Table:
    return from_parquet_bytes(store.read_bytes(*parts))


# --- parts and unions ----------------------------------------------------------------------

def part_complete(store: Store, trial_id: str) -> bool:
    return store.exists(PARTS, trial_id, "trials.parquet")


def write_part(store: Store, trial_id: str, tables: Mapping[str, pa.Table]) -> bool:
    """Write one trial's tables; ``trials`` last, as the commit marker.

    Returns False (and writes nothing) if the part is already complete: a trial's rows are
    written once and then never change, even if the trial is reported again after a resume.
    """
    if part_complete(store, trial_id):
        return False
    if tables["trials"].num_rows != 1:
        raise ValueError(f"a part holds exactly one trials row, got {tables['trials'].num_rows}")
    for name in ROW_TABLES:
        tbl = tables.get(name, SCHEMAS[name].empty_table())
        write_table(store, tbl.cast(SCHEMAS[name]), PARTS, trial_id, f"{name}.parquet")
    write_table(store, tables["trials"].cast(TRIALS_SCHEMA), PARTS, trial_id, "trials.parquet")
    return True


def complete_parts(store: Store) -> list[str]:
    return [t for t in store.listdir(PARTS) if not t.startswith(".") and part_complete(store, t)]


def read_part(store: Store, trial_id: str, name: str) -> pa.Table:
    if not store.exists(PARTS, trial_id, f"{name}.parquet"):
        return SCHEMAS[name].empty_table()
    return conform(read_table(store, PARTS, trial_id, f"{name}.parquet"), name)


def rebuild_unions(store: Store, names: Sequence[str] = TABLES) -> dict[str, int]:
    """Rewrite the union tables from the complete parts; returns rows per table."""
    ids = complete_parts(store)
    counts = {}
    for name in names:
        tables = [read_part(store, t, name) for t in ids]
        tbl = pa.concat_tables(tables) if tables else SCHEMAS[name].empty_table()
        if name == "trials" and tbl.num_rows:
            tbl = tbl.sort_by([("started_at", "ascending"), ("trial_id", "ascending")])
        write_table(store, tbl, f"{name}.parquet")
        counts[name] = tbl.num_rows
    return counts
