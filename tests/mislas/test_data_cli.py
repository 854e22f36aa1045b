"""``python -m mislas describe``: one JSON object, or one line on stderr and exit 2.

A few cases run as real subprocesses (started together: each pays a torch import); the rest
call ``main`` in-process, which is the same code path after argument parsing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mislas.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mislas", "describe", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_subprocess_cases(list_roots: dict[str, Path], tmp_path: Path) -> None:
    root = list_roots["places_lt"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 1\nb.jpg one\n")
    procs = {
        "ok": _start("--dataset", "places_lt", "--data-root", str(root), "--check-files"),
        "malformed": _start("--dataset", "places_lt", "--data-root", str(root), "--train-list", str(bad)),
        "argparse": _start("--data-root", str(root)),
    }
    results = {name: (p.wait(timeout=120), *p.communicate()) for name, p in procs.items()}

    rc, out, err = results["ok"]
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["num_classes"] == 365 and obj["train_images"] == sum(obj["class_counts"])
    assert set(obj["splits"]) == {"many", "medium", "few"}
    assert obj["missing_count"] == obj["train_images"] + obj["val_images"] + obj["test_images"]
    assert obj["missing_files"][0] == str(root / "train/0/0.jpg")

    rc, out, err = results["malformed"]
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert f"{bad}:2: malformed line 'b.jpg one'" in err

    rc, out, err = results["argparse"]
    assert rc == 2 and err.count("\n") == 1 and "--dataset" in err


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        rc = main(["describe", *args])
    except SystemExit as exc:  # argparse
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--dataset", "imagenet"), "unknown data set 'imagenet'; allowed: cifar10_lt"),
        (("--dataset", "places_lt", "--data-root", "/no/such/dir"), "data root /no/such/dir does not exist"),
        (("--dataset", "places_lt", "--imb-factor", "abc"), "--imb-factor: invalid float value: 'abc'"),
        (("--dataset", "fashion_mnist_lt", "--imb-factor", "0.5"), "imb_factor >= 1 must hold"),
    ],
)
def test_bad_input_one_line_exit_2(capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needle: str) -> None:
    rc, out, err = _run(capsys, *args)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and needle in err


def test_bad_lists_name_file_and_line(
    capsys: pytest.CaptureFixture[str], list_roots: dict[str, Path], tmp_path: Path
) -> None:
    root = list_roots["places_lt"]
    out_of_range = tmp_path / "range.txt"
    out_of_range.write_text("a.jpg 0\n\nb.jpg 400\n")
    rc, _, err = _run(capsys, "--dataset", "places_lt", "--data-root", str(root), "--test-list", str(out_of_range))
    assert rc == 2 and f"{out_of_range}:3: label 400 is out of range; allowed 0..364" in err
    rc, _, err = _run(capsys, "--dataset", "places_lt", "--data-root", str(root), "--val-list", "missing.txt")
    assert rc == 2 and f"list file {root / 'missing.txt'} does not exist" in err


def test_describe_array_set(capsys: pytest.CaptureFixture[str], cifar10_root: Path) -> None:
    rc, out, _ = _run(capsys, "--dataset", "cifar10_lt", "--data-root", str(cifar10_root), "--n-max", "20",
                      "--imb-factor", "10", "--check-files")  # fmt: skip
    obj = json.loads(out)
    assert rc == 0 and obj["class_counts"][0] == 20 and obj["imbalance_ratio"] == 10.0
    assert obj["splits"] == {
        "many": 0,
        "medium": 1,
        "few": 9,
    }  # counts 20, 15, 11, 9, 7, 5, 4, 3, 2, 2 and obj["missing_count"] == 0
