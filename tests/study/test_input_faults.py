"""Bad storage and input files for ``study.run`` and ``study.report`` (issue 17.4): each is one
line (under 300 characters) naming the path and what is allowed, exit 2 (1 for a report it
cannot write), before Ray starts, and nothing in the study folder is written or lost."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from study import report, run
from study.space import MAX_SPACE_BYTES

BASE = ["--dataset", "fashion_mnist_lt", "--budget", "smoke", "--name", "t"]


def run_main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        code = run.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    assert "\n" not in err, err
    assert "Traceback" not in err
    assert len(err) < 300, (len(err), err)
    return err


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_storage_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "results"
    target.write_text("not a folder\n")
    code, err = run_main(capsys, [*BASE, "--storage", str(target)])
    assert code == 2
    assert str(target) in one_line(err) and "is a file, not a folder" in err and "allowed:" in err
    assert target.read_text() == "not a folder\n"
    assert not ray.is_initialized()


def test_storage_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    code, err = run_main(capsys, [*BASE, "--storage", str(tmp_path / "f" / "sub")])
    assert code == 2 and "is a file, not a folder" in one_line(err)
    assert snapshot(tmp_path) == {"f": b"x"}


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[None]:
    """``path`` as a folder no write reaches: a read-only tmpfs as root (who ignores modes),
    mode 0o555 otherwise. Either way checked with a probe file."""
    path.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"running as root, and a read-only tmpfs cannot be mounted here: {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    path.chmod(0o555)
    try:
        yield
    finally:
        path.chmod(0o755)


def test_storage_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    with read_only_folder(ro):
        with pytest.raises(OSError):  # the folder really refuses writes (root included)
            (ro / "probe").write_text("x")
        code, err = run_main(capsys, [*BASE, "--storage", str(ro)])
        assert code == 2
        assert str(ro) in one_line(err) and "cannot write in" in err and "allowed:" in err
        assert list(ro.iterdir()) == []
    assert not ray.is_initialized()


@pytest.mark.parametrize("content", [b'{"name": "t", "identity": {"datasets": ["fashion', b"", b"\xff\xfe{}",
                                     b'["a list"]'])
def test_damaged_study_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    study = tmp_path / "t"
    study.mkdir()
    (study / "study.json").write_bytes(content)
    (study / "parts").mkdir()
    (study / "parts" / "keep.txt").write_text("a row")
    before = snapshot(tmp_path)
    code, err = run_main(capsys, [*BASE, "--storage", str(tmp_path)])
    assert code == 2
    assert str(study / "study.json") in one_line(err) and "pick a new --name" in err
    assert snapshot(tmp_path) == before  # nothing written, nothing set aside
    assert not ray.is_initialized()


def test_space_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    content = b"dataset: fashion_mnist_lt\ncomment: caf\xe9\n"
    space.write_bytes(content)
    code, err = run_main(capsys, [*BASE, "--storage", str(tmp_path / "r"), "--space", str(space)])
    assert code == 2
    assert str(space) in one_line(err) and "not UTF-8" in err and f"byte {content.index(0xE9)}:" in err
    assert not (tmp_path / "r").exists()


def test_space_too_large(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_bytes(b"dataset: fashion_mnist_lt\n" + b"#" * MAX_SPACE_BYTES + b"\n")
    code, err = run_main(capsys, [*BASE, "--storage", str(tmp_path / "r"), "--space", str(space)])
    assert code == 2
    assert str(space) in one_line(err) and "larger than 1 MiB" in err
    assert not (tmp_path / "r").exists()


# --- study.report ----------------------------------------------------------------------------

def report_main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = report.main(argv)
    return code, capsys.readouterr().err.strip()


def test_report_damaged_union_without_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "trials.parquet").write_bytes(b"PAR1 truncated")
    code, err = report_main(capsys, [str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert str(tmp_path / "trials.parquet") in one_line(err) and "does not read back" in err
    assert not (tmp_path / "out").exists()


def test_report_foreign_union(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(pa.table({"x": [1, 2], "y": ["a", "b"]}), tmp_path / "trials.parquet")
    code, err = report_main(capsys, [str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert str(tmp_path / "trials.parquet") in one_line(err) and "not a study's trials table" in err
    assert not (tmp_path / "out").exists()


def small_study(tmp_path: Path) -> Path:
    from tests.study.reporting.report_fixture import DEFAULT_GROUPS, make_study

    return make_study(tmp_path / "studies", groups=(DEFAULT_GROUPS[0],), running=0)


def test_report_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = small_study(tmp_path)
    before = snapshot(study)
    out = tmp_path / "out"
    with read_only_folder(out):
        code, err = report_main(capsys, [str(study), "--out", str(out), "--formats", "md"])
        assert code == 1
        assert str(out) in one_line(err) and "cannot write" in err and "cannot read" not in err
    assert snapshot(study) == before


def test_report_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = small_study(tmp_path)
    (tmp_path / "out").write_text("x")
    code, err = report_main(capsys, [str(study), "--out", str(tmp_path / "out")])
    assert code == 1 and "cannot write" in one_line(err) and str(tmp_path / "out") in err
    assert not (study / "report").exists()
