"""The report built from the Parquet of a real smoke study (real Ray, Optuna and Parquet).

A small in-process study with MiSLAS search trials and baselines on Fashion-MNIST-LT; every
number of the method comparison is recomputed here from trials.parquet with plain pandas.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from study.report import build_report

REPO = Path(__file__).resolve().parents[3]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
LABELS = {("ce", True): "CE+mixup", ("crt", True): "cRT+mixup", ("tau_norm", True): "τ-norm+mixup"}
METRICS = {"Many": "test_acc_many", "Medium": "test_acc_medium", "Few": "test_acc_few", "All": "test_acc",
           "ECE": "test_ece", "NLL": "test_nll"}

pytestmark = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                reason="needs Debian's dataset-fashion-mnist")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    storage = tmp_path_factory.mktemp("real-study")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
    proc = subprocess.run(
        [sys.executable, "-m", "study.run", "--dataset", "fashion_mnist_lt", "--budget", "smoke", "--trials", "3",
         "--methods", "mislas,ce,crt,tau_norm", "--baseline-mixup", "on", "--scheduler", "fifo", "--group-size", "3",
         "--set", "data.test_per_class=100",
         "--storage", str(storage), "--name", "real", "--num-cpus", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, start_new_session=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return storage / "real"


def test_report_of_a_real_study_matches_pandas(study_dir: Path, tmp_path: Path) -> None:
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == 6 and set(trials["method"]) == {"mislas", "ce", "crt", "tau_norm"}
    result = build_report(study_dir, tmp_path / "report", ["html", "md", "tex"])
    (group,) = result.tables.groups
    stats = group.comparison.stats

    done = trials[trials["status"] == "complete"]
    for (method, mixup), label in LABELS.items():
        rows = done[(done["method"] == method) & (done["mixup"] == mixup)]
        assert len(rows) == 1
        for metric, column in METRICS.items():
            expected = float(rows[column].iloc[0])
            got = float(stats.loc[label, f"{metric}_mean"])
            assert (math.isnan(expected) and math.isnan(got)) or math.isclose(got, expected, rel_tol=1e-9), label
    paper = done[(done["method"] == "mislas") & done["is_paper_setting"]]
    assert len(paper) == 1
    assert math.isclose(float(stats.loc["MiSLAS (paper setting)", "All_mean"]), float(paper["test_acc"].iloc[0]))
    # best tuned: highest val accuracy, ties by lower val ECE, among complete MiSLAS trials
    mislas = done[done["method"] == "mislas"].sort_values(["val_acc", "val_ece"], ascending=[False, True])
    assert math.isclose(float(stats.loc["MiSLAS (best tuned)", "All_mean"]), float(mislas["test_acc"].iloc[0]))

    names = {p.name for p in result.files}
    assert {"report.html", "report.md", "tables.tex"} <= names
    html = (tmp_path / "report" / "report.html").read_text()
    assert "CE+mixup" in html and "data:image/png;base64," in html
    pngs = sorted((tmp_path / "report").rglob("*.png"))
    assert pngs, "the Markdown report has its figures as PNG files"
    for png in pngs:
        pixels = np.asarray(Image.open(png).convert("RGB"))
        assert pixels.size > 0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1, png
