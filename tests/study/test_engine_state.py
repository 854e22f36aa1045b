"""The trial's Stage-2 state between reports (study.engine_state): written once, moved, pointed to, pruned.

Real files on a local folder and on pyarrow's in-memory object store (``mock://``); the
engine's file is stood in for by bytes (the module moves files, it never reads them), and
once the real engine is interrupted after a report and resumed through the pointer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mislas.data import LTData
from mislas.records import EpochRecord
from mislas.stage1 import train_stage1
from mislas.stage2 import train_subgroups
from study.engine_state import POINTER, STATE, EngineState
from study.storage import Store
from tests.helpers import tiny_cfg

CPU = torch.device("cpu")


def _engine_writes(engine: EngineState, sub: str, data: bytes) -> None:
    """What the engine does each epoch: ``<work>/<sub>/stage2.pt`` replaced atomically (a new file)."""
    folder = engine.work / sub
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, folder / STATE)


def _stored(location: str, trial: str = "t1") -> dict[str, bytes]:
    store = Store(location).child("engine", trial)
    if not store.exists():
        return {}
    return {n: store.read_bytes(n) for n in store.listdir() if n != "work"}


@pytest.fixture(params=["local", "mock"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "study") if request.param == "local" else f"mock://bucket-{tmp_path.name}/study"


def test_each_report_moves_the_new_state_into_the_store_and_keeps_the_last_two(location: str, tmp_path: Path) -> None:
    reported = tmp_path / "work"
    reported.mkdir()
    engine = EngineState(location, "t1", tmp_path / "scratch")
    engine.start(reported)
    for epoch in (1, 2, 3):
        _engine_writes(engine, "sub0", b"state after epoch %d" % epoch)
        engine.publish(epoch, reported)
        assert not (engine.work / "sub0" / STATE).exists()  # moved, not copied: the work folder is empty again
        pointer = json.loads((reported / POINTER).read_text())
        assert pointer["files"] == {"sub0": f"sub0-e{epoch}.pt"}
        assert pointer["previous"] == ({} if epoch == 1 else {"sub0": f"sub0-e{epoch - 1}.pt"})
        engine.prune()
        kept = {f"sub0-e{e}.pt": b"state after epoch %d" % e for e in range(max(1, epoch - 1), epoch + 1)}
        assert _stored(location) == kept  # the newest report's state and the one before, as Tune's num_to_keep=2
    assert sum(p.stat().st_size for p in reported.rglob("*") if p.is_file()) < 200  # the report holds a pointer


def test_a_restored_trial_resumes_from_the_pointed_state_and_finished_subgroups_are_not_written_again(
        location: str, tmp_path: Path) -> None:
    reported = tmp_path / "work"
    reported.mkdir()
    first = EngineState(location, "t1", tmp_path / "scratch")
    first.start(reported)
    _engine_writes(first, "sub0", b"sub0 finished")  # an earlier sub-group, done before the first report
    _engine_writes(first, "sub1", b"sub1 epoch 1")
    first.publish(1, reported)
    first.prune()
    _engine_writes(first, "sub1", b"sub1 epoch 2")
    first.publish(2, reported)
    first.prune()
    _engine_writes(first, "sub1", b"sub1 epoch 3, never reported")  # the attempt dies here
    # Tune restores the report of epoch 1 (the one before the newest: its files are kept)
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / POINTER).write_text(json.dumps({"files": {"sub0": "sub0-e1.pt", "sub1": "sub1-e1.pt"},
                                                "previous": {}}))
    again = EngineState(location, "t1", tmp_path / "scratch")
    again.start(restored)
    assert {p.parent.name: p.read_bytes() for p in again.work.glob(f"sub*/{STATE}")} == {
        "sub0": b"sub0 finished", "sub1": b"sub1 epoch 1"}  # the stale epoch-3 file of the dead attempt is gone
    if Store(location).local:  # a hard link, no bytes written
        assert (again.work / "sub0" / STATE).stat().st_ino == Store(location).child("engine", "t1").local_path(
            "sub0-e1.pt").stat().st_ino
    _engine_writes(again, "sub1", b"sub1 epoch 2 again")
    again.publish(2, restored)
    pointer = json.loads((restored / POINTER).read_text())
    assert pointer["files"] == {"sub0": "sub0-e1.pt", "sub1": "sub1-e2.pt"}  # sub0's state is not published again
    again.prune()
    assert set(_stored(location)) == {"sub0-e1.pt", "sub1-e1.pt", "sub1-e2.pt"}
    assert _stored(location)["sub1-e2.pt"] == b"sub1 epoch 2 again"


def test_finish_keeps_only_what_the_last_intermediate_report_names(location: str, tmp_path: Path) -> None:
    reported = tmp_path / "work"
    reported.mkdir()
    engine = EngineState(location, "t1", tmp_path / "scratch")
    engine.start(reported)
    for epoch in (1, 2):
        _engine_writes(engine, "sub0", b"e%d" % epoch)
        engine.publish(epoch, reported)
        engine.prune()
    _engine_writes(engine, "sub0", b"last epoch")  # the final epoch: no intermediate report follows
    engine.finish(reported)
    assert not engine.work.exists() and not (reported / POINTER).exists()
    assert _stored(location) == {"sub0-e2.pt": b"e2"}  # Tune keeps that report's checkpoint beside the final one


def test_a_pointed_state_that_is_gone_fails_in_one_line(location: str, tmp_path: Path) -> None:
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / POINTER).write_text(json.dumps({"files": {"sub0": "sub0-e4.pt"}, "previous": {}}))
    with pytest.raises(RuntimeError, match=r"names Stage-2 state .*sub0-e4\.pt, which is gone") as err:
        EngineState(location, "t1", tmp_path / "scratch").start(restored)
    assert "\n" not in str(err.value)


def test_a_checkpoint_from_before_the_pointer_resumes_from_the_state_it_holds(tmp_path: Path) -> None:
    restored = tmp_path / "restored"
    (restored / "engine" / "sub0").mkdir(parents=True)
    (restored / "engine" / "sub0" / STATE).write_bytes(b"old layout")
    engine = EngineState(str(tmp_path / "study"), "t1", tmp_path / "scratch")
    engine.start(restored)
    assert (engine.work / "sub0" / STATE).read_bytes() == b"old layout"
    assert not (restored / "engine").exists()  # the next report carries a pointer, not the state
    engine.publish(3, restored)
    assert _stored(str(tmp_path / "study")) == {"sub0-e3.pt": b"old layout"}


def test_a_trial_without_an_intermediate_report_leaves_nothing_in_the_store(location: str, tmp_path: Path) -> None:
    reported = tmp_path / "work"
    reported.mkdir()
    engine = EngineState(location, "t1", tmp_path / "scratch")
    engine.start(reported)
    _engine_writes(engine, "sub0", b"the only epoch")
    engine.finish(reported)
    assert not Store(location).exists("engine", "t1")


class _Stop(Exception):
    pass


@pytest.mark.usefixtures("one_thread")
def test_the_engine_resumed_through_a_pointer_ends_where_an_uninterrupted_run_ends(tmp_path: Path,
                                                                                  tiny: LTData) -> None:
    """The real engine (two sub-groups: mixed shift BN) reports after epoch 1 and dies in epoch 2; a new
    attempt restored from that report's checkpoint resumes from the pointed files, bit for bit."""
    model = train_stage1(tiny, tiny_cfg(), device=CPU, progress=False).model
    cfgs = [tiny_cfg(shift_bn=True, eps_1=0.3, epochs=3), tiny_cfg(shift_bn=False, eps_1=0.2, epochs=3)]
    alone = train_subgroups(tiny, model, cfgs, device=CPU, progress=False)
    location, reported = str(tmp_path / "study"), tmp_path / "work"
    reported.mkdir()
    first = EngineState(location, "t1", tmp_path / "scratch")
    first.start(reported)
    seen: list[tuple[int, int]] = []

    def report_then_die(i: int, rec: EpochRecord) -> None:
        seen.append((i, rec.epoch))
        if (i, rec.epoch) == (1, 1):  # both members have epoch 1 (sub-group 0 ran all its epochs before)
            first.publish(1, reported)
            first.prune()
        if (i, rec.epoch) == (1, 2):
            raise _Stop

    with pytest.raises(_Stop):
        train_subgroups(tiny, model, cfgs, device=CPU, checkpoint_dir=first.work, on_epoch=report_then_die,
                        progress=False)
    again = EngineState(location, "t1", tmp_path / "scratch")
    again.start(reported)  # the checkpoint of the report after epoch 1
    resumed_epochs: list[tuple[int, int]] = []
    resumed = train_subgroups(tiny, model, cfgs, device=CPU, checkpoint_dir=again.work,
                              on_epoch=lambda i, rec: resumed_epochs.append((i, rec.epoch)), progress=False)
    assert resumed_epochs == [(1, 2), (1, 3)]  # sub-group 0 was finished; sub-group 1 continues after epoch 1
    for a, b in zip(alone, resumed):
        sa, sb = a.model.classifier.state_dict(), b.model.classifier.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert [r.train_loss for r in a.epochs] == [r.train_loss for r in b.epochs]


@pytest.mark.usefixtures("one_thread")
def test_a_hostile_state_file_behind_the_pointer_is_refused_and_runs_nothing(tmp_path: Path, tiny: LTData) -> None:
    """A shared study folder whose engine file was replaced by a pickle that runs code: the resumed
    trial's engine refuses it (one line naming the file and the global) and the code never runs."""
    from mislas.safe_load import UnsafeFileError
    from tests.mislas.hostile import SYSTEM, plant

    model = train_stage1(tiny, tiny_cfg(), device=CPU, progress=False).model
    cfgs = [tiny_cfg(eps_1=0.3, epochs=2)]
    location, reported = str(tmp_path / "study"), tmp_path / "work"
    reported.mkdir()
    first = EngineState(location, "t1", tmp_path / "scratch")
    first.start(reported)

    def report_then_die(i: int, rec: EpochRecord) -> None:
        first.publish(rec.epoch, reported)
        raise _Stop

    with pytest.raises(_Stop):
        train_subgroups(tiny, model, cfgs, device=CPU, checkpoint_dir=first.work, on_epoch=report_then_die,
                        progress=False)
    named = json.loads((reported / POINTER).read_text())["files"]
    assert list(named.values()) == ["sub0-e1.pt"]
    marker = tmp_path / "marker"
    stored = tmp_path / "study" / "engine" / "t1" / "sub0-e1.pt"
    plant(stored, marker, kind="stage2")
    again = EngineState(location, "t1", tmp_path / "scratch")
    again.start(reported)
    with pytest.raises(UnsafeFileError) as info:
        train_subgroups(tiny, model, cfgs, device=CPU, checkpoint_dir=again.work, progress=False)
    line = str(info.value)
    assert "\n" not in line and SYSTEM in line and "stage2.pt" in line
    assert not marker.exists()
