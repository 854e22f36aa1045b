"""Bring your own Stage 1: --stage1-checkpoint makes the study train no Stage 1 and use the given one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mislas.errors import UsageError
from study import cli
from tests.study.test_e2e import FMNIST, SMOKE, finish, start

# CE alone (Stage 1 evaluated as it is) is enough to tell one Stage 1 from another, and cheap
TINY = [*SMOKE, "--methods", "ce", "--baseline-mixup", "on", "--max-failures", "0"]


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's fashion-mnist")
def test_a_given_stage1_is_used_and_nothing_is_trained(tmp_path: Path) -> None:
    first = tmp_path / "a"
    assert finish(start(["study.run", *TINY, "--storage", str(first), "--name", "a"], tmp_path / "a.log"), 600) == 0, \
        (tmp_path / "a.log").read_text()[-3000:]
    (ckpt,) = (first / "stage1").glob("*/stage1.pt")
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
    assert b.loc["ce", "stage1_key"] == f"given:{ckpt}" and not b["stage1_trained"].any()
    assert a["stage1_trained"].any()  # the first study did train it


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
