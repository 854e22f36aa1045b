"""Cluster-scale robustness: one driver per study, nothing damaged trusted, unions at the end, umask.

Unit tests (seconds) on the real pieces: the driver lock, the Stage-1 cache's checksum, the
journal rebuild's trial order, modes under a umask, the report on a ``mock://`` store. One real
study (Fashion-MNIST-LT, smoke budget shrunk further) is killed, damaged and resumed, with a
second driver refused while the resume runs; every process it starts runs in a session of its
own and is killed by that session's ids (never ``ray stop``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from mislas.errors import UsageError
from study import journal, results
from study.schema import conform
from study.stage1_cache import Stage1Cache
from study.storage import LockHeld, Store, StudyLock
from study.tune_adapter import trial_storage_id

REPO = Path(__file__).resolve().parents[2]
KEY = "fashion_mnist_lt-mixup-s0-robust"


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(store: Store, **record: object) -> None:
    store.makedirs()
    store.write_bytes(json.dumps(record).encode(), StudyLock.FILE)


# --- 1. one driver per study ----------------------------------------------------------------

def test_lock_refuses_a_second_driver_and_takes_over_a_stale_one(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "study"))
    host = socket.gethostname()
    first = StudyLock(store).acquire()
    assert json.loads(store.read_bytes(StudyLock.FILE))["pid"] == os.getpid()
    with pytest.raises(LockHeld) as refused:
        StudyLock(store).acquire()
    message = str(refused.value)
    assert f"pid {os.getpid()} on host {host}" in message and "\n" not in message
    first.release()
    assert not store.exists(StudyLock.FILE)

    # released on exceptions, KeyboardInterrupt included
    with pytest.raises(KeyboardInterrupt), StudyLock(store):
        assert store.exists(StudyLock.FILE)
        raise KeyboardInterrupt
    assert not store.exists(StudyLock.FILE)

    # a driver that died on this host: its lock is stale and taken over, with one line
    gone = dead_pid()
    write_lock(store, host=host, pid=gone, started_at="2026-01-01T00:00:00+00:00")
    lock = StudyLock(store).acquire()
    line = lock.describe_takeover()
    assert line is not None and f"pid {gone} on host {host}" in line and "no longer running" in line
    assert json.loads(store.read_bytes(StudyLock.FILE))["token"] == lock.token
    lock.release()

    # a live pid that now belongs to a later process (pid reused): stale too
    write_lock(store, host=host, pid=os.getpid(), pid_started="1")
    lock = StudyLock(store).acquire()
    assert lock.took_over is not None
    # ... and release leaves a lock that is no longer this driver's
    write_lock(store, host=host, pid=1, token="someone else")
    lock.release()
    assert store.exists(StudyLock.FILE)

    # another host's driver cannot be checked from here: refused, naming host, pid and file
    write_lock(store, host="node-7", pid=123, started_at="2026-01-01T00:00:00+00:00")
    with pytest.raises(LockHeld, match=r"pid 123 on host node-7 .* delete .*driver\.lock"):
        StudyLock(store).acquire()

    # an object store: best effort, the same answers
    remote = Store(f"mock:///{uuid.uuid4().hex}/study")
    with StudyLock(remote):
        with pytest.raises(LockHeld):
            StudyLock(remote).acquire()
    assert not remote.exists(StudyLock.FILE)


# --- 2. nothing damaged is trusted: the Stage-1 cache -------------------------------------------

def fake_train(calls: list[int], payload: bytes = b"weights" * 1000):  # type: ignore[no-untyped-def]
    """A stand-in for train_stage1 that writes stage1.pt as mislas.checkpoint does (atomically)."""
    from mislas.atomic import write_atomic

    def train(folder: Path) -> dict:
        calls.append(1)
        write_atomic(folder / "stage1.pt", payload)
        return {"val": {"acc": 50.0}}

    return train


def test_stage1_checkpoint_that_does_not_read_back_is_set_aside_and_retrained(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = Stage1Cache(tmp_path / "stage1")
    calls: list[int] = []
    assert cache.get_or_train(KEY, {"k": 1}, fake_train(calls)).trained
    entry = tmp_path / "stage1" / KEY
    done = json.loads((entry / "done.json").read_text())
    assert done["size"] == 7000 and len(done["sha256"]) == 64
    assert not cache.get_or_train(KEY, {"k": 1}, fake_train(calls)).trained  # verified, reused

    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:-1] + b"X"):  # truncated; same size, altered
        data = (entry / "stage1.pt").read_bytes()
        (entry / "stage1.pt").write_bytes(damage(data))
        capsys.readouterr()
        again = cache.get_or_train(KEY, {"k": 1}, fake_train(calls))
        err = capsys.readouterr().err.strip().splitlines()
        assert again.trained and again.checkpoint.read_bytes() == data
        assert len(err) == 1 and str(entry) in err[0] and "set aside" in err[0] and "training it again" in err[0]
    assert len(calls) == 3 and len(cache.trainings(KEY)) == 3
    assert len(list(entry.glob("stage1.pt.damaged-*"))) >= 1 and list(entry.glob("done.json.damaged-*"))

    # an object store: a node's download that does not match is set aside there and retrained
    bucket = f"mock:///{uuid.uuid4().hex}/stage1"
    node_a = Stage1Cache(bucket, local_dir=tmp_path / "node-a")
    node_b = Stage1Cache(bucket, local_dir=tmp_path / "node-b")
    assert node_a.get_or_train(KEY, {}, fake_train(calls)).trained
    node_a.store.write_bytes(b"weights", KEY, "stage1.pt")  # the stored copy is cut short
    assert node_b.get_or_train(KEY, {}, fake_train(calls)).trained
    assert node_a.store.read_bytes(KEY, "stage1.pt") == b"weights" * 1000
    assert any(n.startswith("stage1.pt.damaged-") for n in node_a.store.listdir(KEY))


# --- 2. nothing damaged is trusted: the journal's rebuild keeps every trial where it was -----------

def test_journal_rebuild_keeps_numbers_and_ids(tmp_path: Path) -> None:
    from study.space import default_space_file, load_space

    space = load_space(default_space_file("fashion_mnist_lt"), dataset="fashion_mnist_lt")
    spec = journal.JournalSpec(names={"a": "s:a", "b": "s:b"}, directions=["maximize", "minimize"],
                               metrics=["val_acc", "val_ece"], spaces={"a": space, "b": space})
    setting = {"eps_1": 0.3, "eps_k": 0.1, "form": "exp", "p": 2.0, "dw_ratio": 0.5, "shift_bn": True,
               "las_target": "paper"}
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def row(tid: str, study: str, number: int, status: str, acc: float | None = 50.0) -> dict:
        return {"trial_id": tid, "optuna_study": study, "optuna_trial_number": number, "status": status,
                "val_acc": acc, "val_ece": 5.0, "seed": 0, "is_paper_setting": False, "group_size": 1,
                "started_at": t0, "finished_at": t0, **setting}

    def asked(gid: int, study: str, number: int, tid: str) -> journal.Asked:
        return journal.Asked(trial_id=gid, study=study, number=number, params={"eps_1": 0.2}, datetime_start=t0,
                             distributions={"eps_1": optuna.distributions.FloatDistribution(0.0, 0.6)},
                             user_attrs={"ray_trial_id": tid}, system_attrs={}, intermediate_values={})

    rows = [row("r0", "s:a", 0, "complete"), row("r1", "s:b", 0, "stopped_early"), row("r4", "s:a", 1, "failed"),
            row("r6", "s:a", 3, "complete", acc=None), {"trial_id": "base", "optuna_study": None, "status": "complete"}]
    # Tune's snapshot: ids 0, 1, 3, 4 (id 2 was asked by a killed driver after its snapshot: b's trial 1)
    state = journal.SearcherState(file="x", saved=None, studies={0: "s:a", 1: "s:b"}, trials={
        0: asked(0, "s:a", 0, "r0"), 1: asked(1, "s:b", 0, "r1"), 3: asked(3, "s:b", 2, "r3"),
        4: asked(4, "s:a", 1, "r4")})
    path = tmp_path / "optuna.log"
    counts = journal.rebuild(path, spec, rows, {}, state)
    assert counts == {"finished": 4, "running": 1, "orphaned": 2}
    storage = JournalStorage(JournalFileBackend(str(path)))
    got = {(name, t.number): (trial_storage_id(storage, name, t.number), t.state, t.user_attrs.get("ray_trial_id"), t.values)
           for name in ("s:a", "s:b") for t in optuna.load_study(study_name=name, storage=storage).trials}
    assert got == {
        ("s:a", 0): (0, TrialState.COMPLETE, "r0", [50.0, 5.0]), ("s:b", 0): (1, TrialState.PRUNED, "r1", None),
        ("s:b", 1): (2, TrialState.FAIL, None, None), ("s:b", 2): (3, TrialState.RUNNING, "r3", None),
        ("s:a", 1): (4, TrialState.FAIL, "r4", None), ("s:a", 2): (5, TrialState.FAIL, None, None),
        ("s:a", 3): (6, TrialState.FAIL, "r6", None)}  # r6: complete but val_acc undefined -> FAIL
    trial = optuna.load_study(study_name="s:a", storage=storage).trials[0]
    assert trial.params == {"eps_1": 0.2} and trial.user_attrs["status"] == "complete"
    # rows without searcher state: params replayed through the space (p only for exp)
    assert set(optuna.load_study(study_name="s:a", storage=storage).trials[3].params) == set(setting)

    assert journal.journal_problem(path, spec, rows, state) is None
    data = path.read_bytes()
    bad = {"empty": b"", "truncated": data[:-20], "unreadable": b"garbage\n" + data,
           "lacks the Optuna study s:a": data.split(b"\n", 1)[1]}
    for i, (want, content) in enumerate(bad.items()):
        broken = tmp_path / f"broken{i}.log"
        broken.write_bytes(content)
        assert want in (journal.journal_problem(broken, spec, rows, state) or "")
    more = [*rows, row("r9", "s:a", 9, "complete")]
    assert "lacks trial 9 of s:a (row r9)" in (journal.journal_problem(path, spec, more, state) or "")

    # the RUNNING trial's row is written later (by the driver's reconcile step: no trial reports it): told from it
    assert journal.tell_finished(Store(str(tmp_path)), tmp_path / "cache", spec,
                                 [*rows, row("r3", "s:b", 2, "complete", acc=60.0)]) == 1
    told = optuna.load_study(study_name="s:b", storage=JournalStorage(JournalFileBackend(str(path)))).trials[2]
    assert (told.state, told.values, told.user_attrs["status"]) == (TrialState.COMPLETE, [60.0, 5.0], "complete")


def test_searcher_state_is_read_as_json_retargeted_and_an_old_pickle_refused(tmp_path: Path) -> None:
    """Tune's searcher snapshot as study.search.StudySearcher writes it: read as data (its asked
    trials become journal.Asked), pointed at a moved journal, and an older study's pickle is
    refused in one line without being unpickled."""
    from mislas.config import paper_config
    from study.records import Stage2Setting
    from study.search import MislasOptunaSearch, StudySearcher
    from study.space import default_space_file, load_space

    t6 = Stage2Setting.from_config(paper_config("fashion_mnist_lt", None))
    old = tmp_path / "old" / "optuna.log"
    old.parent.mkdir()
    storage = JournalStorage(JournalFileBackend(str(old)))
    space = load_space(default_space_file("fashion_mnist_lt"), dataset="fashion_mnist_lt")
    sub = MislasOptunaSearch(space=space, metric=["val_acc", "val_ece"], mode=["max", "min"], sampler_seed=0,
                             study_name="s:f", storage=storage)
    searcher = StudySearcher(searchers={"f": sub}, n_trials={"f": 2}, seeds=(0,), table6={"f": t6},
                             spaces={"f": space}, fixed=[], metric=["val_acc", "val_ece"], mode=["max", "min"],
                             study_names={"f": "s:f"}, journal_file=str(old))
    searcher.suggest("t0")
    store = Store(str(tmp_path / "study"))
    (tmp_path / "study" / "tune").mkdir(parents=True)
    searcher.save(str(tmp_path / "study" / "tune" / "searcher-state-2026.json"))
    state = journal.read_searcher_state(store)
    assert state is not None and state.journal_files == {str(old)} and state.studies == {0: "s:f"}
    (asked,) = state.trials.values()
    assert (asked.trial_id, asked.study, asked.number, asked.user_attrs["ray_trial_id"]) == (0, "s:f", 0, "t0")
    assert set(asked.params) <= set(asked.distributions) and asked.params
    moved = tmp_path / "study" / "optuna.log"
    journal.retarget_searcher_state(store, state, moved)
    assert journal.read_searcher_state(store).journal_files == {str(moved)}  # type: ignore[union-attr]

    for f in (tmp_path / "study" / "tune").iterdir():
        f.unlink()
    (tmp_path / "study" / "tune" / "searcher-state-2025.pkl").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(UsageError) as refused:
        journal.read_searcher_state(store)
    assert "as a pickle" in str(refused.value) and "\n" not in str(refused.value)


# --- 4. files honour the umask --------------------------------------------------------------------

@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_parts_unions_and_stage1_files_honour_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    store = Store(str(tmp_path / "study"))
    row = {"trial_id": "a", "study": "s", "dataset": "fashion_mnist_lt", "method": "mislas", "status": "complete",
           "started_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    with umask(mask):
        results.write_part(store, "a", {"trials": results.table("trials", [row])})
        results.rebuild_unions(store)
        Stage1Cache(tmp_path / "stage1").get_or_train(KEY, {"k": 1}, fake_train([]))
        lock = StudyLock(store).acquire()
    files = [*(tmp_path / "study" / "parts" / "a").iterdir(), *(tmp_path / "study").glob("*.parquet"),
             *(tmp_path / "stage1" / KEY).iterdir(), tmp_path / "study" / StudyLock.FILE]
    files = [f for f in files if not f.name.startswith(".")]  # (filelock's own .lock)
    modes = {str(f): oct(f.stat().st_mode & 0o777) for f in files}
    lock.release()
    # a part and the unions (one file per table each), a Stage-1 entry, the driver lock
    assert len(files) == 2 * len(results.TABLES) + 5 + 1
    assert modes == {str(f): oct(mode) for f in files}


# --- 3. the report: parts when the unions are missing, on any storage ------------------------------

def test_report_on_a_mock_store_reads_parts_when_the_unions_are_missing(tmp_path: Path) -> None:
    """The report's fixture study, split into per-row parts on a mock:// store, unions left out;
    ``python -m study.report mock://…`` (in this process: mock:// lives in memory) reads parts/."""
    import study.report
    from study.reporting.load import load_study
    from tests.study.reporting.report_fixture import DEFAULT_GROUPS, make_study

    local = make_study(tmp_path, groups=(DEFAULT_GROUPS[2],), running=1)
    # (the fixture writes no predictions.parquet, as a study from before that table)
    tables = {name: pq.read_table(local / f"{name}.parquet") for name in results.TABLES
              if (local / f"{name}.parquet").exists()}
    assert set(results.TABLES) - set(tables) == {"predictions"}
    uri = f"mock:///{uuid.uuid4().hex}/studies/{local.name}"
    store = Store(uri)
    for name in ("study.json", "optuna.log"):
        store.write_bytes((local / name).read_bytes(), name)
    for tid in tables["trials"]["trial_id"].to_pylist():
        results.write_part(store, tid, {name: conform(tbl.filter(pc.equal(tbl["trial_id"], tid)), name)
                                        for name, tbl in tables.items()})
    assert not store.exists("trials.parquet")

    data = load_study(uri)
    assert len(data.trials) == tables["trials"].num_rows and len(data.classes) == tables["classes"].num_rows
    assert any("read from parts/" in n for n in data.notes) and data.optuna.studies
    expected = load_study(local)  # the same rows as from the unions
    for name, key in (("trials", ["trial_id"]), ("epochs", ["trial_id", "epoch"]),
                      ("classes", ["trial_id", "class_index"])):
        a, b = (getattr(d, name)[tables[name].column_names].sort_values(key).reset_index(drop=True)
                for d in (expected, data))
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    out = tmp_path / "report"
    assert study.report.main([uri, "--out", str(out), "--formats", "html"]) == 0
    assert "read from parts/" in (out / "report.html").read_text()

    results.rebuild_unions(store)  # unions written (as a finished study has): read them, no note
    assert not any("parts/" in n for n in load_study(uri).notes)


def test_report_cli_on_a_bad_uri_exits_2_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import study.report

    assert study.report.main(["nosuchfs://bucket/study", "--formats", "html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuchfs://bucket/study" in err[0]
    assert study.report.main([f"mock:///{uuid.uuid4().hex}/none"]) == 2
    assert "no study in" in capsys.readouterr().err


# --- the real study: killed, damaged, resumed; a second driver refused ------------------------------

FMNIST = Path("/usr/share/datasets/fashion-mnist")
ARGS = ["--dataset", "fashion_mnist_lt", "--budget", "smoke", "--set", "data.test_per_class=100", "--trials", "2", "--methods", "mislas", "--num-cpus",
        "2", "--set", "stage2.epochs=2"]


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's dataset-fashion-mnist")
def test_real_study_killed_damaged_resumed(tmp_path: Path) -> None:
    from study.reporting.load import load_study
    from tests.study.helpers import check_optuna, complete_parts, env, finish, kill_session, start, wait_for

    storage, name = tmp_path / "st", "robust"
    res = storage / name
    argv = ["study.run", *ARGS, "--storage", str(storage), "--name", name]
    host = socket.gethostname()
    t0 = time.monotonic()

    # -- a study killed after its first row: no unions (written at the end), a stale lock
    with umask(0o022):
        proc = start(argv, tmp_path / "first.log")
    try:
        wait_for(lambda: len(complete_parts(res)) >= 1, 300, proc, "the first finished trial")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_session(proc.pid)
    killed = proc.pid
    t_killed = time.monotonic() - t0
    assert not (res / "trials.parquet").exists()
    assert json.loads((res / "driver.lock").read_text())["pid"] == killed
    first_row = complete_parts(res)[0]

    # -- the report's loader reads parts/ (unions missing)
    data = load_study(res)
    assert list(data.trials["trial_id"]) == complete_parts(res) and any("read from parts/" in n for n in data.notes)

    # -- damage: a truncated journal, a truncated part file, a truncated Stage-1 checkpoint
    log = (res / "optuna.log").read_bytes()
    (res / "optuna.log").write_bytes(log[: len(log) // 2])
    part_file = res / "parts" / first_row / "trials.parquet"
    first_before = pd.read_parquet(part_file).set_index("trial_id")
    part_file.write_bytes(part_file.read_bytes()[:300])
    (s1,) = (storage / "stage1").glob("*/stage1.pt")
    s1.write_bytes(s1.read_bytes()[:1000])

    # -- the resume; a second driver started meanwhile is refused in one line
    with umask(0o022):
        proc = start([*argv, "--resume"], tmp_path / "second.log")
    try:
        def locked_by_resume() -> bool:
            try:
                return json.loads((res / "driver.lock").read_text())["pid"] == proc.pid
            except (OSError, ValueError):
                return False

        wait_for(locked_by_resume, 120, proc, "the resumed driver's lock")
        second_driver = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, stderr = second_driver.communicate(timeout=180)
        finally:
            if second_driver.poll() is None:
                second_driver.kill()
                second_driver.wait()
            kill_session(second_driver.pid)  # (it is refused before Ray starts: nothing should be left)
        other = subprocess.CompletedProcess(second_driver.args, second_driver.returncode, out, stderr)
        code = finish(proc, 400)
    except BaseException:
        finish(proc, 1)
        raise
    second = (tmp_path / "second.log").read_text()
    assert code == 0, second[-3000:]
    assert other.returncode == 2, other.stderr[-2000:]
    err = [ln for ln in other.stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln]
    assert len(err) == 1 and f"pid {proc.pid} on host {host}" in err[0], other.stderr  # one line, no traceback
    assert err[0].startswith("python -m study.run: error: --name robust: study ")
    lines = [ln for ln in second.splitlines() if "[study]" in ln]

    def one(text: str) -> str:
        found = [ln for ln in lines if text in ln]
        assert len(found) == 1, (text, lines)
        return found[0]

    assert f"pid {killed} on host {host}" in one("took over the lock")
    assert "is truncated" in one("Optuna journal") and "rebuilt from" in one("Optuna journal")
    assert "does not read back" in one(f"parts/{first_row}/trials.parquet")
    assert "training it again" in one("Stage-1 cache entry")
    assert not (res / "driver.lock").exists()
    assert list(res.glob("optuna.log.damaged-*")) and list((res / "parts" / first_row).glob("*.damaged-*"))
    assert list(s1.parent.glob("stage1.pt.damaged-*"))
    # the row whose part was damaged is written again with the same numbers (its trial resumed
    # from its last Stage-2 checkpoint, on the Stage 1 trained again: both deterministic); only
    # its timings differ, and the Ray node id (each Ray start is a new node)
    union = pd.read_parquet(res / "trials.parquet")
    timings = ["stage1_s", "stage2_s", "wall_s", "started_at", "finished_at", "node_id"]
    pd.testing.assert_frame_equal(union.set_index("trial_id").loc[[first_row]].drop(columns=timings),
                                  first_before.drop(columns=timings), check_dtype=False, rtol=1e-5)
    assert union["trial_id"].is_unique and len(union) == 2 and set(union["status"]) <= {"complete", "stopped_early", "failed", "diverged"}
    check_optuna(res, name, union)  # the journal rebuilt from the parts agrees with the Parquet

    trials = pd.read_parquet(res / "trials.parquet")
    assert sorted(trials["trial_id"]) == complete_parts(res) and len(trials) == 2
    # (a setting that blows up on a smoke budget is diverged, a FAIL, and ends the study too)
    assert set(trials["status"]) <= {"complete", "stopped_early", "diverged"}
    study = optuna.load_study(study_name=f"{name}:fashion_mnist_lt",
                              storage=JournalStorage(JournalFileBackend(str(res / "optuna.log"))))
    by_row = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    want = {"complete": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED, "diverged": TrialState.FAIL}
    for tid, status, number in zip(trials["trial_id"], trials["status"], trials["optuna_trial_number"]):
        # (the user attr is the row's status, "diverged" included, as told by the searcher or rebuilt)
        assert (by_row[tid].state, by_row[tid].user_attrs["status"], by_row[tid].number) == (
            want[status], status, number), tid
    assert not study.get_trials(states=(TrialState.RUNNING,))

    # files written under umask 022 (parts, unions, the Stage-1 entry trained again) are 0644
    written = [*res.glob("parts/*/*.parquet"), *res.glob("*.parquet"), s1, s1.parent / "done.json"]
    assert {oct(f.stat().st_mode & 0o777) for f in written} == {"0o644"}

    # -- the finished study with a journal of garbage: rerun, rebuilt; the report's Optuna section works
    (res / "optuna.log").write_bytes(b"garbage{{{\nmore\n")
    proc = start(argv, tmp_path / "third.log")
    code = finish(proc, 200)
    third = (tmp_path / "third.log").read_text()
    assert code == 0, third[-3000:]
    assert len([ln for ln in third.splitlines() if "Optuna journal" in ln and "is unreadable" in ln]) == 1
    data = load_study(res)  # (the whole report of 2 trials is left to tests/study/reporting)
    assert data.optuna.note == "" and list(data.optuna.studies) == [f"{name}:fashion_mnist_lt"]
    assert sum(data.optuna.states.values()) == 2 and "RUNNING" not in data.optuna.states
    rebuilt = {t.user_attrs["ray_trial_id"]: t.number for t in data.optuna.studies[f"{name}:fashion_mnist_lt"].trials}
    assert rebuilt == dict(zip(trials["trial_id"], trials["optuna_trial_number"]))
    assert not any("parts/" in n for n in data.notes)  # the unions were written at the end
    print(f"killed after {t_killed:.0f} s; all in {time.monotonic() - t0:.0f} s")
