"""The Stage-1 phase: which Stage 1s a study plans and what it refuses.

A real phase, data-parallel (Ray Train, 2 gloo workers), killed mid-training and resumed:
tests/study/test_stage1_given.py; the DDP arithmetic against one process:
tests/mislas/test_distributed.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mislas.errors import UsageError
from study import cli
from study.stage1_phase import needed, plan
from tests.study.helpers import SMOKE


def test_the_plan_is_every_flavour_and_seed_a_trial_uses() -> None:
    s = cli.parse([*SMOKE, "--methods", "mislas,ce", "--trials", "2", "--seeds", "0,1", "--baseline-mixup", "off"])
    # MiSLAS: the mixup Stage 1 of each seed; CE (--baseline-mixup off): the plain one of each seed
    assert needed(s) == [("fashion_mnist_lt", False, 0), ("fashion_mnist_lt", False, 1),
                         ("fashion_mnist_lt", True, 0), ("fashion_mnist_lt", True, 1)]
    s = cli.parse([*SMOKE, "--methods", "ce", "--baseline-mixup", "on", "--ablation", "components",
                   "--stage1-workers", "2"])
    assert needed(s) == [("fashion_mnist_lt", False, 0), ("fashion_mnist_lt", True, 0)]  # the ablation's plain one
    jobs = plan(s, {"fashion_mnist_lt": "f" * 16})
    assert [(j.mixup, j.config.stage1.mixup, j.config.seed) for j in jobs] == [(False, False, 0), (True, True, 0)]
    assert all(j.key is not None and j.key.startswith(f"fashion_mnist_lt-{'mixup' if j.mixup else 'plain'}-s0-")
               for j in jobs)
    assert plan(s, {})[0].key is None  # data not seen by the driver: the worker keys it


def test_given_stage1_needs_no_training(tmp_path: Path) -> None:
    ckpt = tmp_path / "s1.pt"
    ckpt.write_bytes(b"x")
    s = cli.parse([*SMOKE, "--methods", "mislas,ce", "--baseline-mixup", "on", "--stage1-checkpoint", str(ckpt)])
    assert needed(s) == []


def test_worker_count_must_divide_the_global_batch() -> None:
    with pytest.raises(UsageError, match=r"--stage1-workers 3: fashion_mnist_lt's stage1.batch_size=32 is not a "
                                         r"multiple of it"):
        cli.parse([*SMOKE, "--stage1-workers", "3"])
    assert cli.parse([*SMOKE, "--stage1-workers", "2"]).identity()["stage1_workers"] == 2
    assert "stage1_workers" not in cli.parse(SMOKE).identity()  # 1: studies made before it resume
