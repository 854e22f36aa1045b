"""``mislas.train`` faults end in one line: a diverged run (status 1, stage / epoch / member and
a lower lr), a refused input (status 2) that leaves no empty ``--out`` folder behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mislas.train import main as train_main

FM = ["--dataset", "fashion_mnist_lt", "--imb-factor", "10", "--set", "data.n_max=40", "--set", "data.val_per_class=4",
      "--preset", "smoke", "--set", "stage1.epochs=1", "--set", "stage2.epochs=1", "--device", "cpu", "--quiet"]


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_diverged_run_ends_in_one_line_naming_where_and_what_to_try(tmp_path: Path, make_fashion_mnist,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = make_fashion_mnist(tmp_path / "fm", per_class=50, test_per_class=4)
    rc = train_main([*FM, "--data-root", str(root), "--out", str(tmp_path / "run"), "--set", "stage1.lr=1e30"])
    err = _lines(capsys)
    assert rc == 1 and len(err) == 1, err
    assert re.fullmatch(r"error: stage 1, epoch 1, member 0: training diverged \((mean training loss \S+|non-finite "
                        r"parameters)\); try a lower learning rate, e.g. --set stage1.lr=1e\+29 \(now 1e\+30\)",
                        err[0]), err[0]
    assert "Traceback" not in err[0] and not (tmp_path / "run" / "metrics-mislas.json").exists()


def test_a_refused_run_leaves_no_empty_out_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "run"
    rc = train_main([*FM, "--data-root", str(tmp_path / "no-data"), "--out", str(out)])
    err = _lines(capsys)
    assert rc == 2 and len(err) == 1 and "no-data" in err[0], err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"  # a folder the user made is theirs: kept, even empty
    kept.mkdir()
    assert train_main([*FM, "--data-root", str(tmp_path / "no-data"), "--out", str(kept)]) == 2
    assert kept.is_dir()


def test_a_divergence_crosses_processes_with_where_it_happened() -> None:
    import pickle

    from mislas.errors import NonFiniteError

    err = NonFiniteError("loss is nan", stage=2, epoch=3, member=5)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, NonFiniteError) and str(back) == "loss is nan"
    assert (back.stage, back.epoch, back.member) == (2, 3, 5)
