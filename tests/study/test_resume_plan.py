"""The ResumePlan's pieces on real files (no Ray run): Tune's state kept whole and put back, a
foreign-schema part set aside, what a trial whose rows are written is told and reports."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mislas.errors import UsageError
from study import results, resume
from study.resume import ResumePlan
from study.storage import Store
from study.trainable import stored_report


def part(tid: str, acc: float) -> dict[str, pa.Table]:
    """One row's trials and epochs tables (the other tables of a part are written empty)."""
    row = {"trial_id": tid, "study": "s", "dataset": "cifar10_lt", "method": "mislas", "mixup": True, "seed": 0,
           "status": "complete", "val_acc": acc, "epochs_planned": 1, "epochs_run": 1,
           "started_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    epochs = results.epochs_rows(tid, [{"epoch": 1, "lr": 0.1, "classifier_lr": 0.05, "train_loss": 2.0,
                                        "wall_s": 1.0, "val": {"acc": acc}}])
    return {"trials": results.table("trials", [row]), "epochs": results.table("epochs", epochs)}

STATE = {"experiment_state-2026-01-01_00-00-00.json": {"trial_data": [1, 2, 3]},
         "search_gen_state-2026-01-01_00-00-00.json": {"counter": 3},
         "searcher-state-2026-01-01_00-00-00.json": {"searchers": {}}}


def write_state(store: Store, state: dict[str, object]) -> None:
    """Tune's three files; ``search_gen_state-*`` is Ray's pickle despite its name (written
    here with pickle.dumps; the code under test never unpickles it)."""
    for name, data in state.items():
        raw = pickle.dumps(data, protocol=5) if name.startswith("search_gen_state-") else json.dumps(data).encode()
        store.write_bytes(raw, "tune", name)


def test_a_truncated_tune_state_is_set_aside_and_the_whole_copy_put_back(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    write_state(store, STATE)
    said: list[str] = []
    assert resume.recover_tune_state(store, said.append) and not said  # whole: nothing to do
    assert resume.keep_whole_state(store)
    whole = {n: store.read_bytes("tune", n) for n in STATE}
    # the run goes on (Tune rewrites its state), then a full disk truncates the experiment state
    write_state(store, {**STATE, "experiment_state-2026-01-01_00-00-00.json": {"trial_data": [1, 2, 3, 4]}})
    newer = store.read_bytes("tune", "experiment_state-2026-01-01_00-00-00.json")
    (tmp_path / "s" / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_bytes(newer[:10])
    assert not resume.keep_whole_state(store)  # a state that does not read back is not copied
    assert resume.recover_tune_state(store, said.append)
    assert {n: store.read_bytes("tune", n) for n in STATE} == whole  # the last whole state, all three files
    assert len(said) == 1 and said[0].startswith(f"Tune's state {tmp_path / 's' / 'tune'}/experiment_state-")
    assert "does not read back (truncated?): set aside as" in said[0] and "restored the copy" in said[0]
    aside = sorted(p.name.split(".damaged-")[0] for p in (tmp_path / "s" / "tune").glob("*.damaged-*"))
    assert aside == sorted(STATE)  # every state file set aside (Tune reads the newest of each kind)
    assert (tmp_path / "s" / "tune" / next(p.name for p in (tmp_path / "s" / "tune").glob(
        "experiment_state-*.damaged-*"))).read_bytes() == newer[:10]  # kept, not deleted


def test_a_truncated_tune_state_without_a_whole_copy_cannot_be_restored(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    write_state(store, STATE)
    gen = tmp_path / "s" / "tune" / "search_gen_state-2026-01-01_00-00-00.json"
    assert resume.keep_whole_state(store) and resume.recover_tune_state(store, print)  # whole (a pickle that ends)
    (tmp_path / "s" / "tune" / resume.WHOLE).unlink()
    gen.write_bytes(gen.read_bytes()[:-1])  # a pickle without its STOP, as a full disk leaves it
    said: list[str] = []
    assert not resume.recover_tune_state(store, said.append)
    assert len(said) == 1 and "search_gen_state-" in said[0] and "there is no whole copy of it" in said[0]
    assert not [p for p in (tmp_path / "s" / "tune").glob("*.json") if not p.name.startswith(".")]


def test_a_part_of_another_schema_is_set_aside_and_the_good_rows_kept(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "study"))
    for tid, acc in (("good", 10.0), ("other", 20.0)):
        assert results.write_part(store, tid, part(tid, acc))
    # a valid Parquet file of another table where a part's trials.parquet belongs
    epochs = pq.read_table(tmp_path / "study" / "parts" / "other" / "epochs.parquet")
    pq.write_table(epochs, tmp_path / "study" / "parts" / "other" / "trials.parquet")
    assert resume.schema_problem(epochs.schema, "trials") is not None
    said: list[str] = []
    assert resume.set_aside_foreign_parts(store, said.append) == ["other"]
    assert len(said) == 1 and "parts/other/trials.parquet does not read back (ValueError: another schema: its " \
        "column 'epoch' is not one of the trials table's)" in said[0] and "row other will be written again" in said[0]
    assert results.complete_parts(store) == ["good"]
    assert results.rebuild_unions(store)["trials"] == 1
    assert results.write_part(store, "other", part("other", 20.0))  # written again (from its checkpoint)
    assert sorted(results.read_table(store, "trials.parquet")["trial_id"].to_pylist()) == ["good"]
    assert results.rebuild_unions(store)["trials"] == 2
    # the schema rule: columns added since a file was written may be missing; a type may not change
    trials = pq.read_table(tmp_path / "study" / "parts" / "good" / "trials.parquet")
    assert resume.schema_problem(trials.schema, "trials") is None
    assert resume.schema_problem(trials.drop_columns(["val_brier"]).schema, "trials") is None
    changed = trials.set_column(trials.schema.get_field_index("val_acc"), "val_acc", pa.array(["x"]))
    assert resume.schema_problem(changed.schema, "trials") == "its column 'val_acc' is string, the trials table's is double"
    assert resume.set_aside_foreign_parts(store, said.append) == []  # nothing else is touched


def test_a_trial_whose_rows_are_written_is_told_them_and_reports_them_back() -> None:
    rows = {"a_0": {"trial_id": "a_0", "status": "complete", "epochs_run": 3, "val_acc": 40.0, "val_ece": 9.0,
                    "test_acc": 38.0},
            "a_1": {"trial_id": "a_1", "status": "diverged", "epochs_run": 2, "val_acc": None, "val_ece": None},
            "b": {"trial_id": "b", "status": "stopped_early", "epochs_run": 1, "val_acc": 20.0, "val_ece": 5.0}}
    written = ResumePlan(tune_path="t", restore=True, rows=rows).reports()
    assert set(written) == set(rows) and written["a_1"]["diverged"] == 1 and written["a_0"]["complete"]
    group = stored_report(written, ["a_0", "a_1"])
    # a group of two: the diverged member's metrics are no result; final only if every member completed
    assert group["group_size"] == 2 and group["epoch"] == 2 and group["final"] == 0 and group["from_part"] == 1
    assert group["val_acc"] == 40.0 and group["val_ece"] == 9.0 and group["diverged"] == 1
    assert group["g0_test_acc"] == 38.0 and group["g1_diverged"] == 1 and group["g0_diverged"] == 0
    one = stored_report(written, ["b"])
    assert one["final"] == 0 and one["epoch"] == 1 and one["val_acc"] == 20.0 and one["g0_test_acc"] is None


def test_results_without_a_resumable_tune_state_are_refused(tmp_path: Path) -> None:
    from study import cli

    storage = tmp_path / "st"
    s = cli.parse(["--dataset", "fashion_mnist_lt", "--budget", "smoke", "--storage", str(storage), "--name", "n"])
    store = Store(str(storage)).child("n")
    plan = resume.plan(s, store, tmp_path / "cache", print)
    assert plan == ResumePlan(tune_path=store.uri("tune"), restore=False)
    assert results.write_part(store, "x", part("x", 1.0))
    with pytest.raises(UsageError, match=r"^--name n: .* holds trial results but no resumable Tune state"):
        resume.plan(s, store, tmp_path / "cache", print)


def test_a_told_failed_row_replays_as_failed_not_diverged() -> None:
    from study.groups import member_result
    from study.search import _status

    rows = {"f": {"trial_id": "f", "status": "failed", "epochs_run": 1, "val_acc": None, "val_ece": None},
            "d": {"trial_id": "d", "status": "diverged", "epochs_run": 2, "val_acc": None, "val_ece": None}}
    written = ResumePlan(tune_path="t", restore=True, rows=rows).reports()
    assert (written["f"]["failed"], written["f"]["diverged"]) == (1, 0)
    assert (written["d"]["failed"], written["d"]["diverged"]) == (0, 1)
    failed, diverged = stored_report(written, ["f"]), stored_report(written, ["d"])
    assert failed["failed"] == 1 and "diverged" not in failed and diverged["diverged"] == 1 and "failed" not in diverged
    # Optuna's user attr (study.search) says what the row says
    assert _status(member_result(failed, 0), error=False) == "failed"
    assert _status(member_result(diverged, 0), error=False) == "diverged"
