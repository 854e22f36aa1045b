"""The results schema is one module: torch-free, in step with mislas's metrics, the setting record and the docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from mislas.metrics import evaluate_logits
from mislas.spec import SplitRule
from study import schema
from study.records import Stage2Setting

REPO = Path(__file__).resolve().parents[2]


def test_schema_imports_neither_torch_nor_mislas_nor_ray() -> None:
    code = ("import sys, study.schema; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'mislas')); "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metric_columns_are_the_keys_mislas_reports() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.0, 3.0], [1.0, 1.5, 0.0]])
    result = evaluate_logits(logits, torch.tensor([0, 1, 2, 0]), np.array([300, 50, 10]), n_bins=15,
                             split_rule=SplitRule(many_above=100, few_below=20))
    assert set(schema.METRICS) <= set(result.summary())


def test_setting_columns_are_the_setting_record() -> None:
    assert tuple(schema.SETTING_COLUMNS) == Stage2Setting.names()
    for name in Stage2Setting.names():
        assert name in schema.TRIALS_SCHEMA.names


def test_every_column_is_documented() -> None:
    text = (REPO / "docs" / "results-schema.md").read_text()
    for table in schema.TABLES:
        section = text.split(f"### {table}.parquet", 1)[1].split("\n### ", 1)[0]
        for name in schema.columns(table):
            assert f"`{name}`" in section, f"{table} column {name} is not documented in docs/results-schema.md"


def test_conform_adds_new_columns_as_null() -> None:
    old = schema.table("trials", [{"trial_id": "a", "val_acc": 1.0}]).drop_columns(["val_nll", "group_id"])
    tbl = schema.conform(old, "trials")
    assert tbl.schema == schema.TRIALS_SCHEMA
    row = tbl.to_pylist()[0]
    assert row["val_nll"] is None and row["group_id"] is None and row["val_acc"] == 1.0
