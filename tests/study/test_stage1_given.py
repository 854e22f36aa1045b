"""Bring your own Stage 1 (--stage1-checkpoint: the study trains none), made by a data-parallel Stage 1
that was killed mid-phase and resumed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from mislas.errors import UsageError
from mislas.safe_load import load_torch_file
from study import cli
from tests.study.helpers import FMNIST, SMOKE, finish, kill_session, start, wait_for

# CE alone (Stage 1 evaluated as it is) is enough to tell one Stage 1 from another, and cheap
TINY = [*SMOKE, "--methods", "ce", "--baseline-mixup", "on", "--max-failures", "0",
        "--set", "stage1.epochs=3", "--set", "stage1.milestones=(2)"]


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's fashion-mnist")
def test_data_parallel_stage1_killed_resumed_then_given(tmp_path: Path) -> None:
    """The first study trains its Stage 1 data-parallel (Ray Train, 2 gloo workers) in its
    Stage-1 phase, is killed mid-phase and rerun: the Stage 1 resumes at its last finished
    epoch. The second study is given that file and trains none."""
    first = tmp_path / "a"
    argv = ["study.run", *TINY, "--storage", str(first), "--name", "a", "--stage1-workers", "2"]
    proc = start(argv, tmp_path / "killed.log")
    try:
        wait_for(lambda: bool(list(first.glob("stage1/*/stage1.partial.pt"))), 300, proc, "a Stage-1 epoch")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_session(proc.pid)
    (partial,) = first.glob("stage1/*/stage1.partial.pt")
    assert not (partial.parent / "done.json").exists() and not (first / "a" / "parts").exists()
    done_before = load_torch_file(partial)["epoch"]  # (one more may end before the kill)
    assert done_before in (1, 2)

    code = finish(start(argv, tmp_path / "a.log"), 600)
    log = (tmp_path / "a.log").read_text()
    assert code == 0, log[-3000:]
    assert "2 data-parallel workers each (Ray Train)" in log and "world_size=2" in log
    assert f"[stage1] resuming after epoch {done_before} from {partial}" in log
    (ckpt,) = (first / "stage1").glob("*/stage1.pt")
    assert ckpt.parent == partial.parent and not partial.exists()
    (training,) = [json.loads(line) for line in (ckpt.parent / "trainings.jsonl").read_text().splitlines()]
    assert training["workers"] == 2 and json.loads((ckpt.parent / "key.json").read_text())["workers"] == 2
    # the killed run's epochs kept, the rest added; the loss is the mean over both workers' samples
    records = load_torch_file(ckpt)["records"]
    assert [r["epoch"] for r in records] == [1, 2, 3] and all(math.isfinite(r["train_loss"]) for r in records)

    second = tmp_path / "b"
    code = finish(start(["study.run", *TINY, "--storage", str(second), "--name", "b", "--stage1-checkpoint",
                         f"fashion_mnist_lt={ckpt}"], tmp_path / "b.log"), 600)
    assert code == 0, (tmp_path / "b.log").read_text()[-3000:]
    summary = json.loads((second / "b" / "summary.json").read_text())
    assert summary["timings"]["stage1_trainings"] == 0 and not (second / "stage1").exists()
    a = pd.read_parquet(first / "a" / "trials.parquet").set_index("method")
    b = pd.read_parquet(second / "b" / "trials.parquet").set_index("method")
    # the same Stage 1, so CE (Stage 1 alone) scores the same to the last digit
    assert b.loc["ce", "test_acc"] == a.loc["ce", "test_acc"] and b.loc["ce", "test_nll"] == a.loc["ce", "test_nll"]
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()  # the key names the file's content, then its path
    assert b.loc["ce", "stage1_key"] == f"given:{sha[:16]}:{ckpt}" and not b["stage1_trained"].any()
    assert b["stage1_workers"].isna().all() and (a["stage1_workers"] == 2).all()
    assert json.loads((first / "a" / "summary.json").read_text())["timings"]["stage1_trainings"] == 1


def test_stage1_checkpoint_arguments_are_checked(tmp_path: Path) -> None:
    ckpt = tmp_path / "s1.pt"
    ckpt.write_bytes(b"x")
    base = [*SMOKE, "--methods", "mislas,ce", "--baseline-mixup", "on"]
    assert cli.parse([*base, "--stage1-checkpoint", str(ckpt)]).stage1_checkpoints == {
        "fashion_mnist_lt": str(ckpt.resolve())}
    for extra, needle in ((["--stage1-checkpoint", str(tmp_path / "none.pt")], "no such file"),
                          (["--stage1-checkpoint", f"cifar10_lt={ckpt}"], "not among --dataset"),
                          (["--stage1-checkpoint", str(ckpt), "--ablation", "components"], "plain-Stage-1")):
        with pytest.raises(UsageError, match=needle):
            cli.parse([*base, *extra])


def test_two_files_behind_one_path_give_rows_of_two_stage1_keys(tmp_path: Path) -> None:
    from study.trainable import given_stage1_key

    path = tmp_path / "s1.pt"
    keys = []
    for content in (b"backbone one", b"backbone two"):
        path.write_bytes(content)
        keys.append(given_stage1_key(str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
    assert keys[0] != keys[1] and all(k.startswith("given:") and k.endswith(f":{path}") for k in keys)
