"""Stage-1 cache: content-addressed keys; concurrent askers (threads, processes) train once."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from mislas.config import paper_config
from study.stage1_cache import Stage1Cache, stage1_key

KEY = "fashion_mnist_lt-mixup-s0-test"


def slow_train(calls: Path, delay: float = 0.6):  # type: ignore[no-untyped-def]
    """A stand-in for train_stage1: records each call, takes a while, writes stage1.pt."""

    def train(folder: Path) -> dict:
        with open(calls, "a") as fh:
            fh.write("x\n")
        time.sleep(delay)
        (folder / "stage1.pt").write_bytes(b"weights")
        return {"val": {"acc": 50.0}, "test": {"acc": 49.0}}

    return train


def _worker(root: str, calls: str, out: str) -> None:
    entry = Stage1Cache(root).get_or_train(KEY, {"k": 1}, slow_train(Path(calls)))
    Path(out).write_text(json.dumps({"trained": entry.trained, "metrics": entry.metrics}))


def test_key_changes_with_what_determines_the_weights() -> None:
    cfg = paper_config("cifar10_lt", 100.0)
    key, inputs = stage1_key("fp", cfg)
    assert key == stage1_key("fp", cfg)[0] and key.startswith("cifar10_lt-mixup-s0-")
    assert inputs["stage1"]["epochs"] == 200
    others = [
        stage1_key("other-data", cfg)[0],
        stage1_key("fp", replace(cfg, seed=1))[0],
        stage1_key("fp", replace(cfg, stage1=replace(cfg.stage1, mixup=False)))[0],
        stage1_key("fp", replace(cfg, stage1=replace(cfg.stage1, epochs=12)))[0],
    ]
    assert len({key, *others}) == 5
    # Stage-2 knobs do not touch Stage 1
    assert stage1_key("fp", replace(cfg, stage2=replace(cfg.stage2, eps_1=0.1)))[0] == key


def test_threads_wait_for_one_training(tmp_path: Path) -> None:
    """Four threads ask at once; the training goes on until all four have asked, so three of
    them ask while it runs. Checked by the order of events, not by wall time: one training, and
    no thread returns before it ended."""
    cache = Stage1Cache(tmp_path / "stage1")
    calls = tmp_path / "calls"
    asked = threading.Semaphore(0)
    events: list[str] = []
    lock = threading.Lock()
    entries = []

    def train(folder: Path) -> dict:
        for _ in range(4):  # every thread has asked (a bound, so a broken lock fails, not hangs)
            assert asked.acquire(timeout=60)
        result = slow_train(calls, delay=0.0)(folder)
        with lock:
            events.append("trained")
        return result

    def ask() -> None:
        asked.release()
        entry = cache.get_or_train(KEY, {"k": 1}, train)
        with lock:
            events.append("returned")
            entries.append(entry)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls.read_text().count("x") == 1
    assert events == ["trained"] + ["returned"] * 4  # they waited for the trainer
    assert sorted(e.trained for e in entries) == [False, False, False, True]
    assert all(e.metrics["val"]["acc"] == 50.0 and e.checkpoint.read_bytes() == b"weights" for e in entries)
    assert all(e.wait_s >= 0 for e in entries)
    assert len(cache.trainings(KEY)) == 1 and cache.is_done(KEY)
    assert json.loads((tmp_path / "stage1" / KEY / "key.json").read_text()) == {"k": 1}


def test_processes_wait_for_one_training(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    calls = tmp_path / "calls"
    outs = [tmp_path / f"out{i}.json" for i in range(3)]
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "stage1"), str(calls), str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert calls.read_text().count("x") == 1
    trained = [json.loads(o.read_text())["trained"] for o in outs]
    assert sorted(trained) == [False, False, True]


def test_a_failed_training_leaves_no_entry_and_is_retried(tmp_path: Path) -> None:
    cache = Stage1Cache(tmp_path / "stage1")

    def broken(folder: Path) -> dict:
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        cache.get_or_train(KEY, {}, broken)
    assert not cache.is_done(KEY)
    entry = cache.get_or_train(KEY, {}, slow_train(tmp_path / "calls", 0.0))
    assert entry.trained and cache.is_done(KEY)


def test_object_store_uploads_once_and_other_nodes_download(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    bucket = f"mock:///{uuid.uuid4().hex}/stage1"
    node_a = Stage1Cache(bucket, local_dir=tmp_path / "node-a")
    node_b = Stage1Cache(bucket, local_dir=tmp_path / "node-b")
    assert node_b.store.fs is node_a.store.fs  # mock:// is one in-memory file system per process, as a bucket
    first = node_a.get_or_train(KEY, {"k": 1}, slow_train(calls, 0.0))
    second = node_b.get_or_train(KEY, {"k": 1}, slow_train(calls, 0.0))
    assert first.trained and not second.trained
    assert second.checkpoint.read_bytes() == b"weights" and second.metrics["test"]["acc"] == 49.0
    assert calls.read_text().count("x") == 1 and len(node_b.trainings(KEY)) == 1
