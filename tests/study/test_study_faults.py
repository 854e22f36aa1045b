"""The study's faults end in one line and lose nothing: a hostile or changed ``--stage1-checkpoint``
(refused before Ray starts / on resume, naming the file), a hostile Stage-1 cache entry whose
done.json sha256 was updated to match, ``--set`` flags in another order (the same study), and
SIGTERM (handled as Ctrl-C: status 1 and the rerun hint, real Ray), and storage faults (real Ray,
real files): a full disk mid-study (a small tmpfs; one line, exit 1, the rerun completes with
the rows of an undisturbed study), a part Parquet of another schema (set aside, its row written
again) and a truncated Tune state (the driver's whole copy put back)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from mislas.config import paper_config
from mislas.data import LTData
from mislas.errors import UsageError
from mislas.safe_load import UnsafeFileError
from mislas.stages import load_stage1
from study import cli, run
from study.driver import check_study_json
from study.settings import canonical_overrides
from study.stage1_cache import CHECKPOINT, DONE, Stage1Cache, file_sha256, stage1_key
from study.storage import Store
from tests.mislas.hostile import SYSTEM, plant
from tests.study.helpers import FMNIST, SMOKE, check_optuna, complete_parts, finish, kill_session, start, wait_for

BASE = ["--dataset", "fashion_mnist_lt", "--budget", "smoke"]


def _study_json(storage: Path, name: str, identity: dict[str, object]) -> Store:
    (storage / name).mkdir(parents=True, exist_ok=True)
    (storage / name / "study.json").write_text(json.dumps({"identity": identity}))
    return Store(str(storage)).child(name)


# --- --set in another order ---------------------------------------------------------------------

def test_set_flags_in_another_order_are_the_same_study(tmp_path: Path) -> None:
    one = ["--set", "stage2.epochs=2", "--set", "stage1.epochs=1"]
    two = ["--set", "stage1.epochs=1", "--set", " stage2.epochs = 2"]
    a = cli.parse([*BASE, *one, "--storage", str(tmp_path), "--name", "s"])
    b = cli.parse([*BASE, *two, "--storage", str(tmp_path), "--name", "s"])
    assert a.identity() == b.identity()
    assert a.identity()["overrides"] == ["stage1.epochs=1", "stage2.epochs=2"]
    # a study saved before the canonical order (its list as given) resumes in either order
    results = _study_json(tmp_path, "s", {**a.identity(), "overrides": ["stage2.epochs=2", "stage1.epochs=1"]})
    assert check_study_json(b, results) is not None
    other = cli.parse([*BASE, "--set", "stage1.epochs=1", "--set", "stage2.epochs=3", "--storage", str(tmp_path),
                       "--name", "s"])
    with pytest.raises(UsageError, match="differs in overrides"):
        check_study_json(other, results)
    assert canonical_overrides(["b=1", "a=2", "b=3"]) == ["a=2", "b=3"]  # a repeated key: the last, as applied


# --- the given Stage 1 ---------------------------------------------------------------------------

def test_resume_with_another_file_behind_the_same_path_is_refused(tmp_path: Path) -> None:
    given = tmp_path / "stage1.pt"
    torch.save({"format_version": 1, "kind": "stage1", "model": {"w": torch.zeros(2)}}, given)
    argv = [*BASE, "--baseline-mixup", "on", "--stage1-checkpoint", str(given), "--storage", str(tmp_path / "st"),
            "--name", "s"]
    first = cli.parse(argv)
    assert first.identity()["stage1_checkpoint_sha256"] == {"fashion_mnist_lt": file_sha256(given)}
    results = _study_json(tmp_path / "st", "s", first.identity())
    assert check_study_json(cli.parse(argv), results) is not None  # the same file: resumes
    torch.save({"format_version": 1, "kind": "stage1", "model": {"w": torch.ones(2)}}, given)  # another backbone
    with pytest.raises(UsageError) as exc:
        check_study_json(cli.parse(argv), results)
    line = str(exc.value)
    assert line.startswith(f"--stage1-checkpoint {given}: not the file study s started with for fashion_mnist_lt")
    assert file_sha256(given)[:12] in line and first.stage1_sha256["fashion_mnist_lt"][:12] in line
    # a study saved before the sha256 was recorded is not refused for it
    old = {k: v for k, v in first.identity().items() if k != "stage1_checkpoint_sha256"}
    assert check_study_json(cli.parse(argv), _study_json(tmp_path / "st", "old", old)) is not None


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"no Fashion-MNIST in {FMNIST}")
def test_study_run_refuses_a_hostile_stage1_checkpoint_before_ray(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    marker = tmp_path / "marker"
    hostile = plant(tmp_path / "downloaded" / "stage1.pt", marker)
    storage = tmp_path / "studies"
    code = run.main([*SMOKE, "--trials", "1", "--baseline-mixup", "on", "--stage1-checkpoint", str(hostile),
                     "--storage", str(storage), "--name", "h"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if "error" in line]
    assert code == 2 and len(errors) == 1 and errors == err[-1:], err
    assert errors[0].startswith(f"python -m study.run: error: --stage1-checkpoint: {hostile}: refused, it holds "
                                f"{SYSTEM}"), errors[0]
    assert not marker.exists() and not ray.is_initialized() and not (storage / "h").exists()


def test_a_hostile_cache_entry_with_a_matching_sha256_is_refused(tmp_path: Path, tiny: LTData) -> None:
    """The sha256 in done.json protects against damage, not against a planted file: the load does."""
    cfg = paper_config("cifar10_lt")
    cache = Stage1Cache(str(tmp_path / "stage1"))
    key, inputs = stage1_key(tiny.fingerprint, cfg)
    entry_dir = cache.entry_dir(key)
    marker = tmp_path / "marker"
    hostile = plant(entry_dir / CHECKPOINT, marker)
    (entry_dir / DONE).write_text(json.dumps({"sha256": file_sha256(hostile), "size": hostile.stat().st_size}))
    assert cache.is_reusable(key)

    def must_not_train(folder: Path) -> dict[str, object]:
        raise AssertionError("the entry is done: nothing is trained")

    entry = cache.get_or_train(key, inputs, must_not_train)  # as study.trainable reads it, then:
    with pytest.raises(UnsafeFileError) as exc:
        load_stage1(entry.checkpoint, tiny, cfg, torch.device("cpu"))
    assert exc.value.path == hostile and exc.value.global_name == SYSTEM and not marker.exists()


# --- SIGTERM ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"no Fashion-MNIST in {FMNIST}")
def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    """SIGTERM while trials run: Tune saves its state, exit 1 and the rerun hint (not a C abort)."""
    results = tmp_path / "studies" / "t"
    log = tmp_path / "t.log"
    proc = start(["study.run", *SMOKE, "--trials", "4", "--storage", str(tmp_path / "studies"), "--name", "t",
                  "--max-concurrent", "1"], log)
    try:
        wait_for(lambda: bool(list((results / "tune").glob("*/checkpoint_*"))), 400, proc, "a Stage-2 checkpoint")
        os.kill(proc.pid, signal.SIGTERM)
        code = finish(proc, 120)
    finally:
        kill_session(proc.pid)
    out = log.read_text()
    assert code == 1, out[-3000:]
    ours = [line for line in out.splitlines() if line.startswith("[study]")]  # (Ray's workers may log after it)
    assert ours[-1] == "[study] 0 of 4 trials ended; rerun the same command (or add --resume) to continue" \
        or ours[-1].endswith("trials ended; rerun the same command (or add --resume) to continue"), out[-3000:]
    assert "Fatal Python error" not in out and "core dumped" not in out


# --- resources the cluster cannot give --------------------------------------------------------------

def test_cpus_above_num_cpus_are_refused_before_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main([*BASE, "--num-cpus", "2", "--cpus-per-trial", "3", "--storage", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["python -m study.run: error: --cpus-per-trial 3: more than --num-cpus 2, so no trial "
                                 "could start"]


def test_check_resources_against_the_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from study.driver import check_resources

    s = cli.parse([*BASE, "--cpus-per-trial", "3", "--storage", str(tmp_path)])
    with pytest.raises(UsageError, match=r"^--cpus-per-trial 3: the Ray cluster has 2 CPUs, so no trial could "
                                         r"start; give at most what it has"):
        check_resources(s, {"CPU": 2.0})
    with pytest.raises(UsageError, match=r"start now; .*add --wait-for-resources SECONDS"):  # (tests/study/
        check_resources(s, {"CPU": 2.0}, joined=True)  # test_input_faults.py: the wait, on a real cluster)
    check_resources(s, {"CPU": 3.0})
    g = cli.parse([*BASE, "--stage1-gpus-per-worker", "0.5", "--storage", str(tmp_path)])
    with pytest.raises(UsageError, match=r"^--stage1-gpus-per-worker 0.5: the Ray cluster has no GPU"):
        check_resources(g, {"CPU": 4.0})
    check_resources(g, {"CPU": 4.0, "GPU": 1.0})


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"no Fashion-MNIST in {FMNIST}")
def test_gpus_on_a_cluster_without_gpus_are_refused_not_waited_for(tmp_path: Path) -> None:
    """Real Ray on this GPU-less machine: exit 2 and one line instead of waiting forever."""
    log = tmp_path / "g.log"
    proc = start(["study.run", *SMOKE, "--trials", "1", "--gpus-per-trial", "1", "--storage",
                  str(tmp_path / "studies"), "--name", "g"], log)
    try:
        code = finish(proc, 300)
    finally:
        kill_session(proc.pid)
    out = log.read_text()
    assert code == 2, out[-3000:]
    ours = [line for line in out.splitlines() if line.startswith("python -m study.run: error:")]
    assert ours == ["python -m study.run: error: --gpus-per-trial 1: the Ray cluster has no GPU, so nothing could "
                    "start; give at most what it has (--num-cpus / the machine's CPUs and GPUs)"], out[-3000:]
    assert "Traceback" not in out


# --- storage faults: a full disk, a part of another schema, a truncated Tune state -----------------

FAULT_ARGS = [*SMOKE, "--trials", "3", "--methods", "mislas", "--num-cpus", "2", "--set", "stage2.epochs=2"]
TIMINGS = ["stage1_s", "stage2_s", "wall_s", "started_at", "finished_at", "node_id"]


def study_lines(log: Path) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("[study]")]


def run_to_end(argv: list[str], log: Path, timeout: float = 400) -> int:
    proc = start(argv, log)
    try:
        return finish(proc, timeout)
    except BaseException:
        finish(proc, 1)
        raise


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk is full."""
    ballast = disk / "ballast"
    with ballast.open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError:
            pass
    return ballast


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"no Fashion-MNIST in {FMNIST}")
def test_storage_faults_end_in_one_line_and_lose_nothing(tmp_path: Path, small_disk: Path) -> None:
    # -- an undisturbed study: the rows to expect
    plain = tmp_path / "plain"
    assert run_to_end(["study.run", *FAULT_ARGS, "--storage", str(plain), "--name", "f"], tmp_path / "plain.log") == 0
    expected = pd.read_parquet(plain / "f" / "trials.parquet")
    shutil.copytree(plain / "stage1", small_disk / "stage1")  # the same Stage 1 (the disk holds the rest)

    # -- the same study on a disk that fills up after its first row
    res = small_disk / "f"
    argv = ["study.run", *FAULT_ARGS, "--storage", str(small_disk), "--name", "f"]
    proc = start(argv, tmp_path / "full.log")
    try:
        wait_for(lambda: len(complete_parts(res)) >= 1, 300, proc, "the first row")
        ballast = fill(small_disk)
        code = finish(proc, 300)
    except BaseException:
        finish(proc, 1)
        raise
    full = study_lines(tmp_path / "full.log")
    written = complete_parts(res)
    assert code == 1, (tmp_path / "full.log").read_text()[-3000:]
    kept_rows = f"the {len(written)} rows written are" if len(written) != 1 else "the row written is"
    assert full[-1] == (f"[study] {res}: no space left on device; {kept_rows} kept: free space there and rerun the "
                        f"same command to continue"), full
    kept = {t: pq.read_table(res / "parts" / t / "trials.parquet").to_pandas() for t in written}

    # -- space freed: the same command resumes and completes, with the undisturbed study's row count
    ballast.unlink()
    code = run_to_end(argv, tmp_path / "resumed.log")
    resumed = study_lines(tmp_path / "resumed.log")
    assert code == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    union = pd.read_parquet(res / "trials.parquet")
    assert len(union) == len(expected) == 3 and union["trial_id"].is_unique
    assert set(union["status"]) <= {"complete", "stopped_early", "diverged"}  # no row of the fault's "failed"
    for t, before in kept.items():  # the rows written before the fault stay as they were
        pd.testing.assert_frame_equal(union[union["trial_id"] == t].reset_index(drop=True), before,
                                      check_dtype=False)
    check_optuna(res, "f", union)

    # -- a part whose trials.parquet is valid Parquet of another table: set aside, its row written
    # again from its trial's last checkpoint (a row the resumed run trained: a trial that was told
    # its rows instead of training has no checkpoint of its end)
    victim = sorted(set(union["trial_id"]) - set(kept))[0]
    shutil.copy(res / "parts" / victim / "epochs.parquet", res / "parts" / victim / "trials.parquet")
    code = run_to_end(argv, tmp_path / "foreign.log")
    foreign = study_lines(tmp_path / "foreign.log")
    assert code == 0, (tmp_path / "foreign.log").read_text()[-3000:]
    assert len([ln for ln in foreign if f"parts/{victim}/trials.parquet does not read back (ValueError: another "
                                         f"schema" in ln]) == 1, foreign
    again = pd.read_parquet(res / "trials.parquet")
    pd.testing.assert_frame_equal(again.drop(columns=TIMINGS).set_index("trial_id").sort_index(),
                                  union.drop(columns=TIMINGS).set_index("trial_id").sort_index(), check_dtype=False)

    # -- Tune's experiment state truncated (as a full disk leaves it): the driver's whole copy put back
    (state,) = sorted((res / "tune").glob("experiment_state-*.json"))[-1:]
    state.write_bytes(state.read_bytes()[:4096])
    code = run_to_end(argv, tmp_path / "truncated.log")
    truncated = study_lines(tmp_path / "truncated.log")
    assert code == 0, (tmp_path / "truncated.log").read_text()[-3000:]
    assert len([ln for ln in truncated if "does not read back (truncated?)" in ln and "restored the copy" in ln]) == 1
    last = pd.read_parquet(res / "trials.parquet")
    pd.testing.assert_frame_equal(last.set_index("trial_id").sort_index(), again.set_index("trial_id").sort_index())
    print("\n".join(f"{case}: exit {c}, last line: {lines[-1]}" for case, c, lines in (
        ("full disk", 1, full), ("resumed", 0, resumed), ("foreign schema", 0, foreign),
        ("truncated Tune state", 0, truncated))))
