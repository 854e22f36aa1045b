"""The study's faults end in one line and lose nothing: a hostile or changed ``--stage1-checkpoint``
(refused before Ray starts / on resume, naming the file), a hostile Stage-1 cache entry whose
done.json sha256 was updated to match, ``--set`` flags in another order (the same study), and
SIGTERM (handled as Ctrl-C: status 1 and the rerun hint, real Ray)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

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
from tests.mislas.test_safe_load import SYSTEM, plant
from tests.study.test_e2e import FMNIST, SMOKE, finish, kill_session, start, wait_for

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
