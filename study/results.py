"""The study's Parquet tables: schemas, builders, and atomic writers.

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
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from study.storage import Store

PARTS = "parts"
TABLES = ("trials", "epochs", "classes", "reliability")
STATUSES = ("complete", "stopped_early", "failed")
METRICS = ("acc", "acc_many", "acc_medium", "acc_few", "ece", "mce", "nll")

_F, _I, _S, _B = pa.float64(), pa.int64(), pa.string(), pa.bool_()
_TS = pa.timestamp("us", tz="UTC")

TRIALS_SCHEMA = pa.schema(
    [
        ("trial_id", _S), ("study", _S), ("dataset", _S), ("imb_factor", _F), ("arch", _S), ("method", _S),
        ("mixup", _B), ("seed", _I), ("is_paper_setting", _B), ("group_id", _S), ("group_size", _I),
        ("eps_1", _F), ("eps_k", _F), ("form", _S), ("p", _F), ("dw_ratio", _F), ("shift_bn", _B),
        ("las_target", _S), ("tau", _F),
        ("epochs_planned", _I), ("epochs_run", _I), ("status", _S),
        *[(f"val_{m}", _F) for m in METRICS],
        *[(f"test_{m}", _F) for m in METRICS],
        ("stage1_key", _S), ("stage1_val_acc", _F), ("stage1_test_acc", _F), ("stage1_test_ece", _F),
        ("stage1_trained", _B), ("stage1_s", _F), ("stage2_s", _F),
        ("wall_s", _F), ("started_at", _TS), ("finished_at", _TS), ("error", _S),
        ("budget", _S), ("optuna_study", _S), ("optuna_trial_number", _I), ("data_fingerprint", _S),
        ("config_json", _S),
        ("mislas_version", _S), ("torch_version", _S), ("ray_version", _S), ("optuna_version", _S),
        ("python_version", _S), ("git_commit", _S), ("device_name", _S), ("hostname", _S),
    ]
)  # fmt: skip

EPOCHS_SCHEMA = pa.schema(
    [
        ("trial_id", _S), ("epoch", _I), ("lr", _F), ("classifier_lr", _F), ("train_loss", _F),
        ("val_acc", _F), ("val_acc_many", _F), ("val_acc_medium", _F), ("val_acc_few", _F),
        ("val_ece", _F), ("val_mce", _F), ("val_nll", _F), ("wall_s", _F),
    ]
)  # fmt: skip

CLASSES_SCHEMA = pa.schema(
    [
        ("trial_id", _S), ("class_index", _I), ("count", _I), ("rank", _I), ("split", _S),
        ("test_acc", _F), ("val_acc", _F), ("weight_norm", _F), ("epsilon", _F),
    ]
)  # fmt: skip

RELIABILITY_SCHEMA = pa.schema(
    [
        ("trial_id", _S), ("eval_split", _S), ("bin", _I), ("lower", _F), ("upper", _F), ("count", _I),
        ("accuracy", _F), ("confidence", _F),
    ]
)  # fmt: skip

SCHEMAS: Mapping[str, pa.Schema] = {
    "trials": TRIALS_SCHEMA, "epochs": EPOCHS_SCHEMA, "classes": CLASSES_SCHEMA, "reliability": RELIABILITY_SCHEMA,
}


def _clean(value: Any) -> Any:
    """numpy scalars to Python, NaN to None (Parquet null)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def table(name: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) as a table of the named schema; missing columns are null, unknown ones an error."""
    schema = SCHEMAS[name]
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(schema.names)
        if unknown:
            raise ValueError(f"{name} rows have columns not in the schema: {sorted(unknown)}")
    return pa.Table.from_pylist([{k: _clean(row.get(k)) for k in schema.names} for row in rows], schema=schema)


# --- builders ------------------------------------------------------------------------------

def epochs_rows(trial_id: str, records: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows from :class:`mislas.stages.EpochRecord` objects (or their dicts)."""
    rows = []
    for rec in records:
        r = rec if isinstance(rec, Mapping) else rec.__dict__
        val = r.get("val") or {}
        rows.append({
            "trial_id": trial_id, "epoch": int(r["epoch"]), "lr": r["lr"], "classifier_lr": r["classifier_lr"],
            "train_loss": r["train_loss"], "wall_s": r["wall_s"],
            **{f"val_{m}": val.get(m) for m in METRICS},
        })
    return rows


def classes_rows(trial_id: str, counts: Sequence[int], splits: Mapping[str, Sequence[int]],
                 test_acc: Sequence[float] | None, val_acc: Sequence[float] | None,
                 weight_norms: Sequence[float] | None, epsilon: Sequence[float] | None) -> list[dict[str, Any]]:
    counts_arr = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts_arr, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    split_of = {int(c): name for name, idx in splits.items() for c in idx}

    def at(values: Sequence[float] | None, k: int) -> float | None:
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


# --- Parquet bytes -------------------------------------------------------------------------

def to_parquet_bytes(tbl: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(tbl, buf)
    return buf.getvalue()


def from_parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def write_table_local(tbl: pa.Table, path: Any) -> None:
    """Write a table to a local file atomically (temporary file + rename)."""
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(tbl, tmp)
    os.replace(tmp, path)


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
    for name in ("epochs", "classes", "reliability"):
        tbl = tables.get(name, SCHEMAS[name].empty_table())
        write_table(store, tbl.cast(SCHEMAS[name]), PARTS, trial_id, f"{name}.parquet")
    write_table(store, tables["trials"].cast(TRIALS_SCHEMA), PARTS, trial_id, "trials.parquet")
    return True


def complete_parts(store: Store) -> list[str]:
    return [t for t in store.listdir(PARTS) if not t.startswith(".") and part_complete(store, t)]


def read_part(store: Store, trial_id: str, name: str) -> pa.Table:
    if not store.exists(PARTS, trial_id, f"{name}.parquet"):
        return SCHEMAS[name].empty_table()
    return conform(read_table(store, PARTS, trial_id, f"{name}.parquet"), SCHEMAS[name])


def conform(tbl: pa.Table, schema: pa.Schema) -> pa.Table:
    """``tbl`` in ``schema``; columns added to the schema since the part was written are null."""
    if tbl.schema.names != schema.names:
        cols = [tbl.column(f.name) if f.name in tbl.schema.names else pa.nulls(tbl.num_rows, f.type)
                for f in schema]
        tbl = pa.Table.from_arrays(cols, names=schema.names)
    return tbl.cast(schema)


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
