"""Parquet schema, parts written once, parts read as one dataset, unions rebuilt atomically; storage on a
folder and an object store."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from study import results
from study.storage import Store


def trial_row(tid: str, acc: float) -> dict:
    return {"trial_id": tid, "study": "s", "dataset": "cifar10_lt", "method": "mislas", "mixup": True, "seed": 0,
            "status": "complete", "val_acc": acc, "val_ece": float("nan"), "epochs_planned": 10, "epochs_run": 10,
            "started_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}


def part(tid: str, acc: float) -> dict:
    return {
        "trials": results.table("trials", [trial_row(tid, acc)]),
        "epochs": results.table("epochs", results.epochs_rows(tid, [
            {"epoch": 1, "lr": 0.1, "classifier_lr": 0.05, "train_loss": 2.0, "wall_s": 1.0,
             "val": {"acc": acc, "ece": 1.0, "acc_few": None}}])),
        "classes": results.table("classes", results.classes_rows(
            tid, [5, 50, 500], {"many": [2], "medium": [1], "few": [0]}, [1.0, 2.0, 3.0], None, [0.5, 0.6, 0.7],
            None)),
        "reliability": results.table("reliability", results.reliability_rows(tid, {"test": [
            {"lower": 0.0, "upper": 0.5, "count": 3, "accuracy": 0.5, "confidence": 0.4},
            {"lower": 0.5, "upper": 1.0, "count": 0, "accuracy": None, "confidence": None}]})),
    }


def test_rows_follow_the_schema() -> None:
    tbl = results.table("trials", [trial_row("a", 1.0)])
    assert tbl.schema == results.TRIALS_SCHEMA
    row = tbl.to_pylist()[0]
    assert row["val_ece"] is None and row["p"] is None  # NaN and missing -> null
    with pytest.raises(ValueError, match="not in the schema"):
        results.table("trials", [{"trial_id": "a", "colour": "red"}])
    classes = part("a", 1.0)["classes"].to_pylist()
    assert [(c["class_index"], c["rank"], c["split"]) for c in classes] == [(0, 2, "few"), (1, 1, "medium"),
                                                                           (2, 0, "many")]


@pytest.mark.parametrize("location", ["local", "mock"])
def test_parts_written_once_and_unions_rebuilt(tmp_path: Path, location: str) -> None:
    store = Store(str(tmp_path / "study")) if location == "local" else Store(f"mock:///{uuid.uuid4().hex}/study")
    assert results.write_part(store, "a", part("a", 10.0))
    first = store.read_bytes("parts", "a", "trials.parquet")
    assert not results.write_part(store, "a", part("a", 99.0))  # a finished trial's rows never change
    assert store.read_bytes("parts", "a", "trials.parquet") == first
    store.write_bytes(b"partial", "parts", "b", "epochs.parquet")  # crashed mid-part: no trials.parquet
    assert results.write_part(store, "c", part("c", 20.0))
    assert not results.unions_current(store)  # parts only, no unions yet
    counts = results.rebuild_unions(store)
    assert counts == {"trials": 2, "epochs": 2, "classes": 6, "reliability": 4, "confidence": 0, "predictions": 0}
    assert results.unions_current(store)
    assert results.write_part(store, "d", part("d", 30.0))
    assert not results.unions_current(store)  # a part the unions do not hold yet
    trials = results.read_table(store, "trials.parquet").to_pylist()
    assert [t["trial_id"] for t in trials] == ["a", "c"] and trials[0]["val_acc"] == 10.0
    if location == "local":
        leftovers = [p.name for p in (tmp_path / "study").iterdir() if p.name.startswith(".")]
        assert leftovers == []  # temporary files were renamed over their targets
        assert pq.read_table(tmp_path / "study" / "classes.parquet").num_rows == 6


@pytest.mark.parametrize("location", ["local", "mock"])
def test_unions_stream_in_row_groups(tmp_path: Path, location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written batch by batch (row groups of 5 rows here, the parts scanned a few at a time), a
    union holds the parts' rows in order:
    the same table as the parts read one by one and concatenated (trials sorted by start)."""
    import pyarrow as pa

    store = Store(str(tmp_path / "study")) if location == "local" else Store(f"mock:///{uuid.uuid4().hex}/study")
    ids = [f"t{i:02d}" for i in range(23)]
    for i, tid in enumerate(reversed(ids)):
        results.write_part(store, tid, part(tid, float(i)))
    monkeypatch.setattr(results, "ROW_GROUP_ROWS", 5)
    monkeypatch.setattr(results, "SCAN_BATCH_ROWS", 3)
    monkeypatch.setattr(results, "FILES_PER_SCAN", 4)  # parts scanned 4 at a time
    monkeypatch.setattr(results, "COMPACT_BATCHES", 2)  # held batches combined every 2
    counts = results.rebuild_unions(store)
    for name in ("epochs", "classes", "reliability"):
        expected = pa.concat_tables([results.read_part(store, t, name) for t in ids])  # sorted row ids
        union = results.read_table(store, f"{name}.parquet")
        assert union.equals(expected) and counts[name] == expected.num_rows
        meta = pq.ParquetFile(store.fs.open_input_file(store.path(f"{name}.parquet"))).metadata
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == (
            [5] * (expected.num_rows // 5) + ([expected.num_rows % 5] if expected.num_rows % 5 else []))
    trials = results.read_table(store, "trials.parquet")
    assert trials["trial_id"].to_pylist() == ids  # same start time: by row id
    assert results.read_table(store, "predictions.parquet").num_rows == 0
    assert results.unions_current(store)
    if location == "local":
        assert [p.name for p in (tmp_path / "study").iterdir() if p.name.startswith(".")] == []


def test_store_paths(tmp_path: Path) -> None:
    local = Store(str(tmp_path / "x"))
    assert local.local and local.uri("a", "b") == str(tmp_path / "x" / "a" / "b")
    assert Store(f"file://{tmp_path}").local
    bucket = uuid.uuid4().hex
    remote = Store(f"mock:///{bucket}/root")
    assert not remote.local and remote.uri("a") == f"mock:///{bucket}/root/a"
    remote.write_bytes(b"1", "d", "f.bin")
    assert remote.exists("d", "f.bin") and remote.listdir("d") == ["f.bin"] and remote.listdir("nope") == []
    # mock:// URIs share one file system per process, as s3:// URIs share a bucket; child() keeps it
    assert Store(f"mock:///{bucket}/root/d").exists("f.bin") and remote.child("d").exists("f.bin")


def test_parts_read_as_one_dataset_with_older_parts_and_a_damaged_one(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "study"))
    results.write_part(store, "new", part("new", 10.0))
    # a part written before the confidence table and the val_brier column existed
    old = part("old", 20.0)
    old["trials"] = old["trials"].drop_columns(["val_brier"])
    for name in ("epochs", "classes", "reliability"):
        results.write_table(store, old[name], "parts", "old", f"{name}.parquet")
    results.write_table(store, old["trials"], "parts", "old", "trials.parquet")
    results.write_part(store, "bad", part("bad", 30.0))
    full = store.read_bytes("parts", "bad", "epochs.parquet")
    (tmp_path / "study" / "parts" / "bad" / "epochs.parquet").write_bytes(full[: len(full) // 2])  # truncated

    said: list[str] = []
    tables, damaged = results.load_parts(store, set_aside=False, say=said.append)  # a reader: reports only
    assert set(damaged) == {"bad"} and set(damaged["bad"]) == {"epochs.parquet"} and not said
    assert sorted(tables["trials"]["trial_id"].to_pylist()) == ["new", "old"]  # the damaged part's rows left out
    assert tables["trials"].schema == results.TRIALS_SCHEMA
    row = {r["trial_id"]: r for r in tables["trials"].to_pylist()}["old"]
    assert row["val_brier"] is None and row["val_acc"] == 20.0  # a column added since: null
    assert tables["confidence"].num_rows == 0 and tables["epochs"].num_rows == 2
    assert store.exists("parts", "bad", "trials.parquet")  # nothing renamed by a reader

    assert results.check_parts(store, say=said.append) == ["bad"]  # the driver: set aside, one line
    assert len(said) == 1 and "parts/bad/epochs.parquet does not read back" in said[0] and "ArrowInvalid" in said[0]
    assert results.complete_parts(store) == ["new", "old"]  # incomplete again: written again from its checkpoint
    names = sorted(p.name for p in (tmp_path / "study" / "parts" / "bad").iterdir())
    assert [n.split(".damaged-")[0] for n in names if ".damaged-" in n] == ["epochs.parquet", "trials.parquet"]
    assert results.write_part(store, "bad", part("bad", 30.0))  # the row written again
    assert results.rebuild_unions(store)["trials"] == 3
    assert pq.read_table(tmp_path / "study" / "epochs.parquet").num_rows == 3


class EndedTrial:
    """What ResultsCallback reads of a Tune trial."""

    def __init__(self, trial_id: str, last: dict) -> None:
        from study.records import Stage2Setting, TrialMember, TrialSpec

        self.trial_id, self.last_result, self.checkpoint = trial_id, last, None
        setting = Stage2Setting(eps_1=0.3, eps_k=0.1, form="linear", p=2.0, dw_ratio=0.5, shift_bn=True,
                                las_target="paper")
        self.config = {"spec": TrialSpec(dataset="cifar10_lt", method="mislas", mixup=True, seed=1,
                                         members=(TrialMember(setting, False, 4),), optuna_study="s:cifar10_lt")}


def test_callback_writes_ended_trials_and_leaves_interrupted_ones(tmp_path: Path) -> None:
    from study.callbacks import RecordContext, ResultsCallback
    from study.groups import group_metrics

    ctx = RecordContext(study="s", results_location=str(tmp_path / "s"), budget="paper",
                        imb_factors={"cifar10_lt": 100.0}, epochs_planned={"cifar10_lt": {"mislas": 10}},
                        versions={"ray_version": "x"}, git_commit=None)
    callback = ResultsCallback(ctx)
    interrupted = EndedTrial("int", group_metrics(epoch=2, final=False, members=[{"val_acc": 40.0}]))  # Ctrl-C
    never_ran = EndedTrial("pend", {})
    stopped = EndedTrial("asha", group_metrics(epoch=2, final=False, members=[{"val_acc": 40.0, "val_ece": 5.0}])
                         | {"done": True})
    assert not callback.record(interrupted, error=None) and not callback.record(never_ran, error=None)
    assert callback.record(stopped, error=None)
    assert callback.record(EndedTrial("bad", {}), error="RuntimeError: boom")
    store = Store(str(tmp_path / "s"))
    assert not store.exists("trials.parquet")  # the callback writes parts only; the driver writes the unions
    tables, _ = results.load_parts(store)
    rows = {r["trial_id"]: r for r in tables["trials"].to_pylist()}
    assert set(rows) == {"asha", "bad"}
    asha = rows["asha"]
    assert (asha["status"], asha["epochs_run"], asha["epochs_planned"], asha["val_acc"]) == (
        "stopped_early", 2, 10, 40.0)
    assert asha["p"] is None and asha["test_acc"] is None and asha["optuna_trial_number"] == 4  # p only for exp
    assert rows["bad"]["status"] == "failed" and rows["bad"]["error"] == "RuntimeError: boom"
