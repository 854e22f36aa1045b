"""``python -m mislas.train``: a real two-stage run end to end, and bad input exiting with 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _train(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mislas.train", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_two_stage_run_writes_metrics(tmp_path: Path, make_fashion_mnist) -> None:
    root = make_fashion_mnist(tmp_path / "fm", per_class=60, test_per_class=6)
    out = tmp_path / "run"
    proc = _train("--dataset", "fashion_mnist_lt", "--data-root", root, "--out", out, "--preset", "smoke",
                  "--imb-factor", "10", "--set", "data.n_max=40", "--set", "data.val_per_class=4", "--set", "stage1.epochs=1",
                  "--set", "stage2.epochs=2", "--set", "stage2.batch_size=32", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "[stage2 mislas] epoch 2/2" in proc.stderr  # progress is shown
    metrics = json.loads((out / "metrics-mislas.json").read_text())
    for split in ("val", "test"):
        summary = metrics[split]
        assert set(summary) >= {"acc", "acc_many", "acc_medium", "acc_few", "ece", "mce", "nll"}
        assert 0 <= summary["acc"] <= 100 and 0 <= summary["ece"] <= 100 and summary["nll"] > 0
        assert summary["acc_many"] is None  # n_max 40: no class has more than 100 images
    # the preset's Stage 2 is the published numbers' setting: the reference's LAS target and epoch length
    assert metrics["config"]["stage2"]["method"] == "mislas" and metrics["las_target"] == "reference"
    # shift BN: the preset's MiSLAS value (Fashion-MNIST-LT takes CIFAR-10-LT's row: off), written as a value
    assert metrics["shift_bn"] is False and metrics["config"]["stage2"]["shift_bn"] is False
    assert metrics["stage2"]["shift_bn"] is False and metrics["stage2"]["epoch_length"] == "reference"
    ts = metrics["temperature_scaling"]  # post-hoc temperature scaling, fitted on val
    assert ts["temperature"] > 0 and ts["test"]["acc"] == pytest.approx(metrics["test"]["acc"])
    assert ts["val"]["nll"] <= metrics["val"]["nll"] + 1e-9  # T minimises the val NLL (T = 1 is a candidate)
    n_train = sum(metrics["per_class"]["train_count"])
    assert [r["steps"] for r in metrics["epochs"]] == [math.ceil(n_train / 32) + 1] * 2  # ceil(N/B) + 1
    assert metrics["stage2"]["steps_per_epoch"] == math.ceil(n_train / 32) + 1
    assert metrics["config"]["data"]["n_max"] == 40
    assert len(metrics["per_class"]["weight_norm"]) == 10
    assert all(math.isfinite(v) for v in metrics["per_class"]["weight_norm"])
    assert (out / "stage1" / "stage1.pt").exists() and (out / "stage2-mislas" / "stage2.pt").exists()

    # a baseline on the same Stage 1 reuses it instead of training again
    proc = _train("--dataset", "fashion_mnist_lt", "--data-root", root, "--out", out, "--preset", "smoke",
                  "--imb-factor", "10", "--set", "data.n_max=40", "--set", "data.val_per_class=4", "--set", "stage1.epochs=1",
                  "--method", "lws", "--set", "stage2.epochs=1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lws = json.loads((out / "metrics-lws.json").read_text())
    assert lws["method"] == "lws" and lws["stage1"] == metrics["stage1"]
    # ... and leaves the first method's metrics as they were: one file per method on one --out
    assert json.loads((out / "metrics-mislas.json").read_text()) == metrics
    assert sorted(p.name for p in out.glob("metrics*.json")) == ["metrics-lws.json", "metrics-mislas.json"]
    assert lws["shift_bn"] is True  # LWS's own default (Kang et al.)

    # MiSLAS on a plain Stage 1 (no mixup), with mixup in Stage 2: the ablation cells run
    proc = _train("--dataset", "fashion_mnist_lt", "--data-root", root, "--out", tmp_path / "plain", "--preset",
                  "smoke", "--imb-factor", "10", "--set", "data.n_max=40", "--set", "data.val_per_class=4",
                  "--set", "stage1.epochs=1", "--no-mixup", "--set", "stage2.mixup=true", "--set", "stage2.epochs=1",
                  "--set", "stage2.epoch_length=2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    plain = json.loads((tmp_path / "plain" / "metrics-mislas.json").read_text())
    assert plain["mixup"] is False and plain["stage2"]["mixup"] is True and plain["epochs"][0]["steps"] == 2
    proc = _train("--dataset", "fashion_mnist_lt", "--data-root", root, "--out", tmp_path / "plain", "--preset",
                  "smoke", "--imb-factor", "10", "--set", "data.n_max=40", "--set", "data.val_per_class=4",
                  "--set", "stage1.epochs=1", "--no-mixup", "--method", "tau_norm", "--quiet")
    assert proc.returncode == 0, proc.stderr
    tau = json.loads((tmp_path / "plain" / "metrics-tau_norm.json").read_text())
    assert tau["shift_bn"] is False and tau["epochs"] == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--dataset", "mnist_lt"), "mnist_lt"),
        (("--dataset", "cifar10_lt", "--method", "focal"), "focal"),
        (("--dataset", "cifar10_lt", "--set", "stage2.epsilon=0.1"), "stage2.epsilon"),
        (("--dataset", "cifar10_lt", "--set", "stage2.eps_1=abc"), "stage2.eps_1"),
        (("--dataset", "cifar10_lt", "--data-root", "/nonexistent/cifar"), "/nonexistent/cifar"),
        (("--dataset", "cifar10_lt", "--preset", "huge"), "huge"),
        (("--dataset", "cifar10_lt", "--set", "stage2.eps_1=nan"), "stage2.eps_1 must be a finite number in [0, 1)"),
        (("--dataset", "cifar10_lt", "--set", "stage2.epoch_length=0"), "stage2.epoch_length"),
        (("--dataset", "cifar10_lt", "--device", "gpu"), "device must be one of"),
        (("--dataset", "cifar10_lt", "--imb-factor", "ten"), "--imb-factor"),
    ],
)
def test_bad_input_exits_2_naming_it(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    line = _one_line_error(_train(*args, "--out", tmp_path / "o"))
    assert needle in line


def test_cuda_without_cuda_and_out_file_exit_2(tmp_path: Path) -> None:
    """Refused before any data is loaded: cifar10_lt has no data here, so a data error would say so."""
    import torch

    if not torch.cuda.is_available():
        line = _one_line_error(_train("--dataset", "cifar10_lt", "--device", "cuda", "--out", tmp_path / "o"))
        assert "CUDA" in line and "not available" in line
    (tmp_path / "file").write_text("x")
    line = _one_line_error(_train("--dataset", "cifar10_lt", "--out", tmp_path / "file"))
    assert "--out" in line and "existing file" in line


def test_bad_split_list_line_exits_2(tmp_path: Path, make_list) -> None:
    make_list(tmp_path / "Places_LT_train.txt", [("a/1.jpg", 0), ("a/2.jpg", 1)])
    (tmp_path / "Places_LT_train.txt").write_text("a/1.jpg 0\nbroken-line-without-label\n")
    make_list(tmp_path / "Places_LT_val.txt", [("v/1.jpg", 0)])
    make_list(tmp_path / "Places_LT_test.txt", [("t/1.jpg", 400)])
    line = _one_line_error(_train("--dataset", "places_lt", "--data-root", tmp_path, "--out", tmp_path / "o"))
    assert "Places_LT_train.txt:2" in line
