"""``python -m mislas describe``: one JSON object, or one line on stderr and exit 2.

A few cases run as real subprocesses (started together: each pays a torch import); the rest
call ``main`` in-process, which is the same code path after argument parsing.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mislas.__main__ import main
from mislas.data.describe import check_images

REPO = Path(__file__).resolve().parents[2]


def _write_image(path: Path, kind: str, seed: int) -> None:
    """``kind``: jpeg / png (real images), text (bytes that are no image), truncated (a JPEG
    cut in half), missing (nothing written)."""
    if kind == "missing":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path.write_bytes(b"this is a text file, not an image\n")
        return
    pixels = np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG" if kind == "png" else "JPEG")
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _places_root(root: Path, train: list[tuple[str, str]], val: list[tuple[str, str]]) -> Path:
    """A Places-LT root: the three official list names (test = val, as a repeat to de-duplicate)."""
    entries = dict(train + val)
    for i, (rel, kind) in enumerate(entries.items()):
        _write_image(root / rel, kind, seed=i)
    for name, split in (("train", train), ("val", val), ("test", val)):
        lines = "".join(f"{rel} {i % 365}\n" for i, (rel, _) in enumerate(split))
        (root / f"Places_LT_{name}.txt").write_text(lines)
    return root


GOOD_TRAIN = [("train/a/0.jpg", "jpeg"), ("train/a/1 one.png", "png"), ("train/b/2.jpg", "jpeg")]
GOOD_VAL = [("val/3.jpg", "jpeg"), ("val/4.png", "png")]
BAD_TRAIN = [
    ("train/a/ok0.jpg", "jpeg"),
    ("train/a/gone0.jpg", "missing"),
    ("train/b/text.jpg", "text"),
    ("train/b/half.jpg", "truncated"),
    ("train/c/ok1.png", "png"),
]
BAD_VAL = [("val/ok2.jpg", "jpeg"), ("val/gone1.png", "missing")]


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
    bad_root = _places_root(tmp_path / "bad", BAD_TRAIN, BAD_VAL)
    procs = {
        "bad_images": _start("--dataset", "places_lt", "--data-root", str(bad_root), "--check-files", "--workers", "2"),
        "malformed": _start("--dataset", "places_lt", "--data-root", str(root), "--train-list", str(bad)),
        "argparse": _start("--data-root", str(root)),
    }
    results = {name: (p.wait(timeout=120), *p.communicate()) for name, p in procs.items()}

    rc, out, err = results["bad_images"]  # the JSON on stdout, then one line on stderr and exit 2
    assert rc == 2 and err.count("\n") == 1, err
    obj = json.loads(out)
    assert obj["checked_images"] == 7  # 5 train + 2 val paths; the test list repeats val
    assert obj["missing_count"] == 2
    assert obj["missing_files"] == [str(bad_root / "train/a/gone0.jpg"), str(bad_root / "val/gone1.png")]
    assert obj["undecodable_count"] == 2
    text, half = obj["undecodable_files"]
    assert text == {"path": str(bad_root / "train/b/text.jpg"), "reason": "cannot identify image file"}
    assert half["path"] == str(bad_root / "train/b/half.jpg") and "truncated" in half["reason"].lower()
    assert err == (
        f"error: 2 of 7 listed images are missing (first: {bad_root / 'train/a/gone0.jpg'}) and 2 do not "
        f"decode (first: {bad_root / 'train/b/text.jpg'}: cannot identify image file)\n"
    )

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
        (("--dataset", "places_lt", "--check-files", "--workers", "0"), "argument --workers: must be >= 1, got 0"),
        (("--dataset", "places_lt", "--workers", "two"), "argument --workers: invalid int value: 'two'"),
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


def test_check_files_lists_only(capsys: pytest.CaptureFixture[str], list_roots: dict[str, Path]) -> None:
    """Lists without images: every image is missing, the JSON still comes, then exit 2."""
    root = list_roots["places_lt"]
    rc, out, err = _run(capsys, "--dataset", "places_lt", "--data-root", str(root), "--check-files")
    assert rc == 2 and err.count("\n") == 1, err
    obj = json.loads(out)
    assert obj["num_classes"] == 365 and obj["train_images"] == sum(obj["class_counts"])
    assert set(obj["splits"]) == {"many", "medium", "few"}
    listed = obj["train_images"] + obj["val_images"] + obj["test_images"]  # the three lists share no path
    assert obj["missing_count"] == obj["checked_images"] == listed and obj["undecodable_count"] == 0
    assert obj["missing_files"][0] == str(root / "train/0/0.jpg") and len(obj["missing_files"]) == 100
    assert err == f"error: {listed:,} of {listed:,} listed images are missing (first: {root / 'train/0/0.jpg'})\n"


def test_check_files_all_good(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = _places_root(tmp_path, GOOD_TRAIN, GOOD_VAL)
    rc, out, err = _run(capsys, "--dataset", "places_lt", "--data-root", str(root), "--check-files")
    assert rc == 0 and err == "", err
    obj = json.loads(out)
    assert obj["train_images"] == 3 and obj["val_images"] == obj["test_images"] == 2
    assert obj["checked_images"] == len(GOOD_TRAIN) + len(GOOD_VAL)  # 5 files; test repeats val
    assert obj["missing_count"] == obj["undecodable_count"] == 0
    assert obj["missing_files"] == obj["undecodable_files"] == []


def test_one_bad_kind_in_process(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Only undecodable images (one truncated PNG), one worker: the line has no missing part."""
    root = _places_root(tmp_path, [("t/0.jpg", "jpeg"), ("t/1.png", "truncated")], [("v/2.png", "png")])
    rc, out, err = _run(capsys, "--dataset", "places_lt", "--data-root", str(root), "--check-files", "--workers", "1")
    obj = json.loads(out)
    assert rc == 2 and obj["checked_images"] == 3 and obj["missing_count"] == 0 and obj["undecodable_count"] == 1
    assert err.startswith(f"error: 1 of 3 listed images does not decode (first: {root / 't/1.png'}: ")
    assert "truncated" in err.lower() and err.count("\n") == 1


def test_check_images_progress(tmp_path: Path) -> None:
    """Progress lines go to the stream while the pool runs (here after every chunk), none at 100%."""
    paths = [str(tmp_path / f"{i}.jpg") for i in range(300)]  # none exists: every image is bad
    stream = io.StringIO()
    check = check_images(paths, workers=2, progress_every_s=0.0, stream=stream)
    assert check.checked == 300 and check.missing == paths and check.undecodable == []
    lines = stream.getvalue().splitlines()
    assert lines
    done = []
    for line in lines:
        m = re.fullmatch(r"\[describe\] checked (\d+)/300 images \((\d+)%\), (\d+) bad so far", line)
        assert m, line
        assert int(m[3]) == int(m[1]) and int(m[2]) == 100 * int(m[1]) // 300
        done.append(int(m[1]))
    assert done == sorted(done) and done[-1] < 300
    quiet = io.StringIO()
    check_images(paths, workers=2, progress_every_s=60.0, stream=quiet)
    assert quiet.getvalue() == ""
