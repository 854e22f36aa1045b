"""The study's results schema: Parquet tables, statuses, metric and setting columns.

The one place that says what a study writes. The driver (study.callbacks), the trial
(study.trainable) and the report (study.reporting) all take their column names from here.
It imports only pyarrow (no torch, Ray or mislas), so a report can be made on a laptop from a
copied results folder. docs/results-schema.md documents every column; a test keeps the two
in step.

Layout under ``<storage>/<name>/``:

* ``parts/<row id>/{epochs,classes,reliability,confidence,predictions,trials}.parquet``: one ended row's tables;
  ``trials.parquet`` is written last and is the commit marker.
* ``trials.parquet`` etc.: the union of the complete parts.

Adding a searched Stage-2 knob: add its column to :data:`SETTING_COLUMNS` (and to
``study.records.Stage2Setting`` and the YAML loader, ``study.space``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

PARTS = "parts"
TABLES = ("trials", "epochs", "classes", "reliability", "confidence", "predictions")

COMPLETE = "complete"
STOPPED_EARLY = "stopped_early"
FAILED = "failed"
# a member whose training blew up: a non-finite loss or metric, or a loss / NLL above
# DIVERGENCE_NATS x ln(C) (C classes; a uniform guess scores ln C). Not a result: left out of the
# report's tables and Pareto fronts, counted in its trial table, told to Optuna as FAIL.
DIVERGED = "diverged"
STATUSES = (COMPLETE, STOPPED_EARLY, FAILED, DIVERGED)
DIVERGENCE_NATS = 10.0

# ``variant`` of the --confirm-best rows: the setting best on validation, rerun on every seed
# (not a component-ablation variant; the comparison's "MiSLAS (best tuned)" row when present).
CONFIRM_VARIANT = "best_on_val"

# The keys of mislas.metrics.EvalResult.summary(), as val_<m> / test_<m> columns
# (tests/study/test_schema.py checks the two agree).
METRICS = ("acc", "acc_many", "acc_medium", "acc_few", "ece", "mce", "nll", "classwise_ece", "adaptive_ece", "brier",
           "ece_many", "ece_medium", "ece_few")
# After post-hoc temperature scaling (one T per trial, fitted on val): <split>_<m>_ts columns.
TS_METRICS = ("ece", "nll", "classwise_ece", "adaptive_ece", "brier")

# Search objectives: name on the command line -> (trials column, direction).
OBJECTIVES = {"acc": ("val_acc", "max"), "ece": ("val_ece", "min")}

_F, _I, _S, _B = pa.float64(), pa.int64(), pa.string(), pa.bool_()
_TS = pa.timestamp("us", tz="UTC")

# One MiSLAS Stage-2 setting (study.records.Stage2Setting has exactly these fields).
SETTING_COLUMNS: dict[str, pa.DataType] = {
    "eps_1": _F, "eps_k": _F, "form": _S, "p": _F, "dw_ratio": _F, "shift_bn": _B, "las_target": _S,
}

TRIALS_SCHEMA = pa.schema(
    [
        ("trial_id", _S), ("study", _S), ("dataset", _S), ("imb_factor", _F), ("arch", _S), ("method", _S),
        ("mixup", _B), ("seed", _I), ("is_paper_setting", _B), ("variant", _S), ("group_id", _S),
        ("group_size", _I), *SETTING_COLUMNS.items(), ("tau", _F),
        ("epochs_planned", _I), ("epochs_run", _I), ("status", _S),
        *[(f"val_{m}", _F) for m in METRICS],
        *[(f"test_{m}", _F) for m in METRICS],
        ("temperature", _F), ("temperature_at_bound", _B), *[(f"val_{m}_ts", _F) for m in TS_METRICS], *[(f"test_{m}_ts", _F) for m in TS_METRICS],
        ("stage1_key", _S), ("stage1_val_acc", _F), ("stage1_test_acc", _F), ("stage1_test_ece", _F),
        ("stage1_trained", _B), ("stage1_s", _F), ("stage1_workers", _I), ("stage2_s", _F),
        ("wall_s", _F), ("started_at", _TS), ("finished_at", _TS), ("error", _S),
        ("budget", _S), ("optuna_study", _S), ("optuna_trial_number", _I), ("data_fingerprint", _S),
        ("config_json", _S),
        ("mislas_version", _S), ("torch_version", _S), ("ray_version", _S), ("optuna_version", _S),
        ("python_version", _S), ("git_commit", _S), ("device_name", _S), ("hostname", _S), ("node_id", _S),
        ("node_ip", _S),
    ]
)  # fmt: skip

EPOCHS_SCHEMA = pa.schema(
    [
        ("trial_id", _S), ("epoch", _I), ("steps", _I), ("lr", _F), ("classifier_lr", _F), ("train_loss", _F),
        *[(f"val_{m}", _F) for m in METRICS], ("wall_s", _F),
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

# The distribution of the top-label confidence (max softmax probability) over the samples whose
# true class is in a Many / Medium / Few split: the data of a box (or violin) plot per split.
CONFIDENCE_SCHEMA = pa.schema(
    [
        ("trial_id", _S), ("eval_split", _S), ("class_split", _S), ("count", _I), ("mean", _F),
        ("q05", _F), ("q25", _F), ("q50", _F), ("q75", _F), ("q95", _F),
    ]
)  # fmt: skip

# Per test image, for the rows a paired comparison needs (every fixed row: baselines, component
# ablation, --confirm-best; and the Table 6 setting); empty for other searched settings, whose
# thousands of rows would multiply the folder's size. The report's paired bootstrap reads it.
PREDICTIONS_SCHEMA = pa.schema(
    [
        ("trial_id", _S), ("eval_split", _S), ("sample", pa.int32()), ("label", pa.int32()),
        ("correct", _B), ("confidence", pa.float32()), ("nll", pa.float32()),
    ]
)  # fmt: skip

SCHEMAS: Mapping[str, pa.Schema] = {
    "trials": TRIALS_SCHEMA, "epochs": EPOCHS_SCHEMA, "classes": CLASSES_SCHEMA, "reliability": RELIABILITY_SCHEMA,
    "confidence": CONFIDENCE_SCHEMA, "predictions": PREDICTIONS_SCHEMA,
}
# the tables a part holds beside trials.parquet (which is written last, as the commit marker)
ROW_TABLES = tuple(t for t in TABLES if t != "trials")


def columns(name: str) -> tuple[str, ...]:
    """The column names of table ``name``."""
    return tuple(SCHEMAS[name].names)


def _clean(value: Any) -> Any:
    """Numpy scalars to Python, NaN to None (Parquet null)."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str, bytes)):
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


def conform(tbl: pa.Table, name: str) -> pa.Table:
    """``tbl`` in the schema of table ``name``; columns added since it was written are null."""
    schema = SCHEMAS[name]
    if tbl.schema.names != schema.names:
        cols = [tbl.column(f.name) if f.name in tbl.schema.names else pa.nulls(tbl.num_rows, f.type)
                for f in schema]
        tbl = pa.Table.from_arrays(cols, names=schema.names)
    return tbl.cast(schema)


def empty(name: str) -> pa.Table:
    """An empty table of the named schema."""
    return SCHEMAS[name].empty_table()
