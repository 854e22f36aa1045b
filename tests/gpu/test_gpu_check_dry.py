"""The GPU check's dry mode (``scripts/gpu-check.sh --device cpu --tiny``), so it cannot rot between loans.

Runs the real script on generated Fashion-MNIST files (gzip IDX, as Debian ships them) and
checks that every step wrote its file, that the files parse, and that the numbers are sane:
the comparisons passed, the speeds are positive, the replication has one row per method with
accuracies in [0, 100] and a table that is their mean. Also: the budget skips what would not
finish and says why; the data staging copies the four files; nothing needs Ray, Optuna or pytest.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from tests.conftest import write_fashion_mnist

ROOT = Path(__file__).resolve().parents[2]
# Every step must run: the estimates scale with the measured speed, and a loaded CPU would skip
# steps under a realistic budget (the budget's skipping has its own test below). Unloaded, the
# dry mode takes about 90 s.
BUDGET_MIN = 60
FILES = ("env.json", "correctness.json", "bench.json", "replication.json", "summary.json", "summary.md", "log.txt")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp = tmp_path_factory.mktemp("gpucheck")
    data = write_fashion_mnist(tmp / "fm", per_class=40, test_per_class=10)
    out = tmp / "out"
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--tiny", "--out", str(out),
                           "--data-root", str(data), "--seeds", "0", "--budget-min", str(BUDGET_MIN)],
                          env={**_env(), "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=BUDGET_MIN * 60 + 300)
    return proc, out


@pytest.mark.timeout(BUDGET_MIN * 60 + 600)  # the first test to use ``dry`` pays for the run
def test_dry_mode_writes_every_step(dry: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = dry
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # flat, <= 8 files: what a device call returns
    summary = json.loads((out / "summary.json").read_text())
    assert {s: v["status"] for s, v in summary["steps"].items()} == {s: "ok" for s in gpu_check.STEPS}
    for step in gpu_check.STEPS:
        assert summary["steps"][step]["wall_s"] > 0
        assert json.loads((out / f"{step}.json").read_text())["wall_s"] == summary["steps"][step]["wall_s"]
    md = (out / "summary.md").read_text()
    for heading in ("b. CUDA correctness", "c. Speed", "d. Fashion-MNIST-LT replication"):
        assert heading in md
    assert md in proc.stdout  # the table is also printed


@pytest.mark.timeout(BUDGET_MIN * 60 + 600)
def test_dry_mode_numbers_are_sane(dry: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = dry
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and env["gpu"] is None and "dry mode" in env["note"]
    assert env["probe"]["resnet32_train_ips_32x32x3"] > 0 and env["probe"]["matmul_tflops"] > 0
    corr = json.loads((out / "correctness.json").read_text())
    names = [c["name"] for c in corr["checks"]]
    assert len(names) == 5 and corr["passed"] and all(c["passed"] for c in corr["checks"]), corr
    bench = json.loads((out / "bench.json").read_text())
    assert bench["stage1"]["stage1_speedup"] > 0 and bench["stage2"]["stage2_group_speedup"] > 0
    sizes = gpu_check.TINY_BENCH
    rows = bench["paper_scale"]
    assert [(r["classes"], r["group"]) for r in rows] == [(k, g) for k in sizes.ps_classes for g in sizes.ps_groups]
    assert all(r["train_ms_per_step"] > 0 and r["train_peak_gib"] is None for r in rows)  # CPU: no allocator stats
    assert all(r["eval_s_per_member_per_1k"] > 0 for r in rows if r["group"] == max(sizes.ps_groups))
    rep = json.loads((out / "replication.json").read_text())
    assert rep["side_by_side"]["alone_img_s"] > 0 and rep["side_by_side"]["pair_img_s"] > 0
    methods = sorted(r["method"] for r in rep["rows"])
    assert methods == sorted(["CE", "cRT", "LWS", "tau-norm", "CE+mixup", "cRT+mixup", "LWS+mixup",
                              "tau-norm+mixup", "MiSLAS"])
    # tiny Stage 1s on random images may leave a Stage 2 to diverge: such a row names the error;
    # CE trains no Stage 2, so its rows always have numbers
    for r in rep["rows"]:
        assert (0 <= r["acc"] <= 100 and r["nll"] > 0) if "error" not in r else "diverged" in r["error"], r
    assert all(r["acc"] is not None for r in rep["rows"] if r["method"].startswith("CE"))
    # each arm's Stage 1 trained its two tiny epochs; the table is the mean over the seeds' rows
    assert [a["epochs"] for a in rep["arms"]] == [2, 2] and all(len(a["epoch_wall_s"]) == 2 for a in rep["arms"])
    for t in rep["table"]:
        rows = [r for r in rep["rows"] if r["method"] == t["method"]]
        accs = [r["acc"] for r in rows if r["acc"] is not None]
        assert t["seeds"] == len(rows) and t["failed"] == len(rows) - len(accs)
        assert t["acc"] == (pytest.approx(statistics.mean(accs)) if accs else None)


def test_budget_skips_what_would_not_finish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 3-second budget: every step's estimate exceeds it, so each is skipped with its reason."""
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--budget-min", "0.05"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for step in gpu_check.STEPS:
        st = summary["steps"][step]
        assert st["status"] == "skipped" and "budget left" in st["reason"] and st["estimate_s"] > 0
        assert not (tmp_path / f"{step}.json").exists()
    assert "skipped" in (tmp_path / "summary.md").read_text() and "skipped" in capsys.readouterr().out


def test_stage_data_copies_the_four_files(tmp_path: Path) -> None:
    src = write_fashion_mnist(tmp_path / "src", per_class=2, test_per_class=1)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--stage-data", "--data-root", str(src)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    staged = tmp_path / gpu_check.STAGED
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in src.iterdir())
    assert all((staged / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())
    bad = subprocess.run([*cmd[:-1], str(tmp_path / "missing")], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing" in bad.stderr


def test_imports_without_ray_optuna_or_pytest() -> None:
    """What a lent GPU machine lacks: the check and the library import with those blocked."""
    code = ("import sys\nfor m in ('ray', 'optuna', 'pytest'): sys.modules[m] = None\n"
            "import benchmarks.gpu_check, benchmarks.cuda_paths, mislas.train, mislas.stages\n"
            "assert all(sys.modules.get(m) is None for m in ('ray', 'optuna', 'pytest'))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
