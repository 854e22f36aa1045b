"""The study's Parquet tables: row builders, per-trial parts and their unions (schemas: study.schema).

Layout under ``<storage>/<name>/`` (docs/results-schema.md documents every column; a test keeps them in step):

* ``parts/<row id>/{epochs,classes,reliability,confidence,trials}.parquet`` -- one ended row's
  rows, written when it ends. ``trials.parquet`` is written last and is the commit marker: a
  part without it is ignored (and rewritten). A part, once complete, is never rewritten, so
  rows written before a crash stay byte-for-byte unchanged.
* ``trials.parquet``, ``epochs.parquet``, ``classes.parquet``, ``reliability.parquet``,
  ``confidence.parquet``, ``predictions.parquet`` -- the union of the complete parts, written
  streaming (batch by batch, bounded memory) and atomically (temporary file + rename, or one
  upload on an object store) when the study ends (and on a resume's
  end), not after every trial: rewriting them per trial would cost O(trials²) reads. While
  a study runs they are missing or older than ``parts/``; readers (a resume, the report) then
  read ``parts/`` itself, as one ``pyarrow.dataset`` of the complete parts' files.

A part file that does not read back (a truncated Parquet file: no footer) is named in one
line and set aside (renamed ``<file>.damaged-<stamp>``, its ``trials.parquet`` too), so the
part is incomplete again and its row is written again from the trial's checkpoint.

Only the driver writes here, so there is a single writer. Imports only pyarrow, numpy and
study modules that do (no torch, Ray or ``mislas``): the report reads parts through it.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from study.schema import METRICS, PARTS, ROW_TABLES, SCHEMAS, TABLES, TRIALS_SCHEMA, conform, table
from study.storage import Store, stamp, write_atomic

__all__ = ["METRICS", "PARTS", "SCHEMAS", "TABLES", "table"]

Floats = Sequence[float] | np.ndarray  # per-class values


# --- builders ------------------------------------------------------------------------------

def epochs_rows(trial_id: str, records: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows from :class:`mislas.records.EpochRecord` objects (or their dicts)."""
    rows = []
    for rec in records:
        r = rec if isinstance(rec, Mapping) else rec.__dict__
        val = r.get("val") or {}
        rows.append({
            "trial_id": trial_id, "epoch": int(r["epoch"]), "steps": r.get("steps"), "lr": r["lr"],
            "classifier_lr": r["classifier_lr"],
            "train_loss": r["train_loss"], "wall_s": r["wall_s"],
            **{f"val_{m}": val.get(m) for m in METRICS},
        })
    return rows


def classes_rows(trial_id: str, counts: Sequence[int], splits: Mapping[str, Any],
                 test_acc: Floats | None, val_acc: Floats | None,
                 weight_norms: Floats | None, epsilon: Floats | None) -> list[dict[str, Any]]:
    counts_arr = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts_arr, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    split_of = {int(c): name for name, idx in splits.items() for c in idx}

    def at(values: Floats | None, k: int) -> float | None:
        return None if values is None or len(values) == 0 else float(values[k])

    return [
        {"trial_id": trial_id, "class_index": k, "count": int(counts_arr[k]), "rank": int(rank[k]),
         "split": split_of.get(k), "test_acc": at(test_acc, k), "val_acc": at(val_acc, k),
         "weight_norm": at(weight_norms, k), "epsilon": at(epsilon, k)}
        for k in range(counts_arr.size)
    ]


def reliability_rows(trial_id: str, bins_by_split: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for split, bins in bins_by_split.items():
        for b, rec in enumerate(bins):
            rows.append({"trial_id": trial_id, "eval_split": split, "bin": b, "lower": rec["lower"],
                         "upper": rec["upper"], "count": int(rec["count"]), "accuracy": rec.get("accuracy"),
                         "confidence": rec.get("confidence")})
    return rows


def predictions_table(trial_id: str, split: str, samples: Any | None) -> pa.Table:
    """One row per evaluated sample (``mislas.metrics.SampleOutcomes``); empty for None."""
    if samples is None:
        return SCHEMAS["predictions"].empty_table()
    n = len(samples.label)
    return pa.table({
        "trial_id": pa.array([trial_id] * n, pa.string()), "eval_split": pa.array([split] * n, pa.string()),
        "sample": pa.array(np.arange(n, dtype=np.int32)), "label": pa.array(samples.label.astype(np.int32)),
        "correct": pa.array(samples.correct.astype(bool)), "confidence": pa.array(samples.confidence.astype(np.float32)),
        "nll": pa.array(samples.nll.astype(np.float32)),
    }, schema=SCHEMAS["predictions"])


def confidence_rows(trial_id: str, by_split: Mapping[str, Mapping[str, Mapping[str, float] | None]]
                    ) -> list[dict[str, Any]]:
    """Rows from ``{eval split: EvalResult.confidence_quantiles}`` (a split with no sample has none)."""
    rows = []
    for eval_split, quantiles in by_split.items():
        for class_split, q in quantiles.items():
            if q is None:
                continue
            rows.append({"trial_id": trial_id, "eval_split": eval_split, "class_split": class_split,
                         "count": int(q.get("count", 0)), "mean": q.get("mean"),
                         **{k: q.get(k) for k in ("q05", "q25", "q50", "q75", "q95")}})
    return rows


# --- Parquet bytes -------------------------------------------------------------------------

def to_parquet_bytes(tbl: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(tbl, buf)
    return buf.getvalue()


def from_parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def write_table_local(tbl: pa.Table, path: Any) -> None:
    """Write a table to a local file atomically."""
    write_atomic(path, to_parquet_bytes(tbl))


def write_table(store: Store, tbl: pa.Table, *parts: str) -> None:
    store.write_bytes(to_parquet_bytes(tbl), *parts)


def read_table(store: Store, *parts: str) -> pa.Table:
    return from_parquet_bytes(store.read_bytes(*parts))


def _say(line: str) -> None:
    print(f"[study] {line}", file=sys.stderr, flush=True)


# --- parts and unions ----------------------------------------------------------------------

def part_complete(store: Store, trial_id: str) -> bool:
    return store.exists(PARTS, trial_id, "trials.parquet")


def write_part(store: Store, trial_id: str, tables: Mapping[str, pa.Table]) -> bool:
    """Write one trial's tables; ``trials`` last, as the commit marker.

    Returns False (and writes nothing) if the part is already complete: a trial's rows are
    written once and then never change, even if the trial is reported again after a resume.
    """
    if part_complete(store, trial_id):
        return False
    if tables["trials"].num_rows != 1:
        raise ValueError(f"a part holds exactly one trials row, got {tables['trials'].num_rows}")
    for name in ROW_TABLES:
        tbl = tables.get(name, SCHEMAS[name].empty_table())
        write_table(store, tbl.cast(SCHEMAS[name]), PARTS, trial_id, f"{name}.parquet")
    write_table(store, tables["trials"].cast(TRIALS_SCHEMA), PARTS, trial_id, "trials.parquet")
    return True


def part_files(store: Store) -> dict[str, dict[str, Any]]:
    """``{row id: {file name: mtime or None}}`` under ``parts/``, from one recursive listing."""
    out: dict[str, dict[str, Any]] = {}
    for info in store.walk_files(PARTS):
        rel = store.relative(info.path).split("/")
        if len(rel) == 3 and not rel[1].startswith("."):
            out.setdefault(rel[1], {})[rel[2]] = info.mtime
    return out


def complete_parts(store: Store, files: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The row ids whose part is complete (its ``trials.parquet`` written), sorted."""
    files = part_files(store) if files is None else files
    return sorted(t for t, names in files.items() if "trials.parquet" in names)


def read_part(store: Store, trial_id: str, name: str) -> pa.Table:
    if not store.exists(PARTS, trial_id, f"{name}.parquet"):
        return SCHEMAS[name].empty_table()
    return conform(read_table(store, PARTS, trial_id, f"{name}.parquet"), name)


def _dataset_table(store: Store, name: str, paths: Sequence[str]) -> pa.Table:
    """The files as one table of ``name``'s schema (columns added since a file was written: null)."""
    if not paths:
        return SCHEMAS[name].empty_table()
    return ds.dataset(list(paths), schema=SCHEMAS[name], format="parquet", filesystem=store.fs).to_table()


def _unreadable(store: Store, path: str) -> Exception | None:
    """Say why the Parquet file at ``path`` does not read back, or None.

    Why the Parquet file at ``path`` (on the store's fs) does not read back, or None. Its
    bytes are fetched first: an I/O error (a store that does not answer) is raised, not taken
    for a damaged file, so a network failure never sets good parts aside.
    """
    with store.fs.open_input_stream(path) as fh:
        data = fh.read()
    try:
        pq.read_table(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - whatever the bytes do to the reader: damaged
        return exc
    return None


def set_aside_part(store: Store, trial_id: str, bad: Mapping[str, Exception], present: Sequence[str],
                   say: Callable[[str], None] = _say) -> None:
    """Set aside a part's unreadable files and its commit marker, so its row is written again.

    Rename a part's unreadable files and its commit marker to ``.damaged-<stamp>``: the part
    is incomplete again, so its row is written again (from the trial's checkpoint).
    """
    suffix = f".damaged-{stamp()}"
    for file in sorted(set(bad) | ({"trials.parquet"} & set(present))):
        store.set_aside(suffix, PARTS, trial_id, file)
    first = sorted(bad)[0]
    exc = bad[first]
    say(f"part {store.uri(PARTS, trial_id, first)} does not read back ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}): set aside as {first}{suffix}"
        f"{' with ' + ', '.join(sorted(set(bad) - {first})) if len(bad) > 1 else ''}; "
        f"row {trial_id} will be written again")


def load_parts(store: Store, names: Sequence[str] = TABLES, *, set_aside: bool = True,
               files: Mapping[str, Mapping[str, Any]] | None = None,
               say: Callable[[str], None] = _say) -> tuple[dict[str, pa.Table], dict[str, dict[str, Exception]]]:
    """The complete parts' tables, each read as one ``pyarrow.dataset``; and the damaged parts.

    A part with a file that does not read back is left out of every table (its rows belong
    together) and, with ``set_aside`` (the driver), renamed by :func:`set_aside_part`; without
    it (the report, a reader) only reported back. Returns ``({table: rows}, {row id: {file: error}})``.
    """
    files = part_files(store) if files is None else files
    tables, damaged = _read_checked(store, names, files)
    if damaged:
        for t, bad in sorted(damaged.items()):
            if set_aside:
                set_aside_part(store, t, bad, list(files[t]), say)
        drop = pa.array(sorted(damaged), pa.string())
        for name, tbl in tables.items():
            if tbl.num_rows:
                tables[name] = tbl.filter(pc.invert(pc.is_in(tbl["trial_id"], value_set=drop)))
    if "trials" in tables and tables["trials"].num_rows:
        tables["trials"] = tables["trials"].sort_by([("started_at", "ascending"), ("trial_id", "ascending")])
    return tables, damaged


def _read_checked(store: Store, names: Sequence[str], files: Mapping[str, Mapping[str, Any]]
                  ) -> tuple[dict[str, pa.Table], dict[str, dict[str, Exception]]]:
    """Each table of the complete parts, the damaged parts' files found and left out of it."""
    tables: dict[str, pa.Table] = {}
    damaged: dict[str, dict[str, Exception]] = {}
    for name in names:
        file = f"{name}.parquet"
        paths = _union_paths(store, name, files)
        try:
            tables[name] = _dataset_table(store, name, list(paths))
        except (pa.ArrowException, OSError, ValueError):
            bad = _find_damaged(store, paths)  # which files: each read alone
            if not bad:
                raise  # not a file's content: an I/O problem
            for path, exc in bad.items():
                damaged.setdefault(paths[path], {})[file] = exc
            tables[name] = _dataset_table(store, name, [p for p, t in paths.items() if t not in damaged])
    return tables, damaged


def check_parts(store: Store, say: Callable[[str], None] = _say) -> list[str]:
    """Set aside every complete part with a file that does not read back; return their row ids.

    Set aside every complete part with a file that does not read back (a resume does this
    before Tune restores its trials); returns their row ids.
    """
    _, damaged = load_parts(store, set_aside=True, say=say)
    return sorted(damaged)


ROW_GROUP_ROWS = 1024 * 1024
"""Rows per row group of a union (pyarrow's ``write_table`` default, so that a union written in
batches has the row groups, and for small studies the bytes, of one written whole)."""

SCAN_BATCH_ROWS = 64 * 1024  # rows per batch read from the parts while a union is written


COMPACT_BATCHES = 256
"""Batches held before they are combined into one: a part's batch is a few rows, and thousands of
tiny chunks of every column cost more than the rows themselves."""


FILES_PER_SCAN = 64
"""Part files scanned by one ``pyarrow.dataset`` in turn: a dataset holds what it read of every
file while it lives (measured: 600 trials parts of 88 columns, 147 MB peak in one dataset,
44 MB in datasets of 64 files; no slower), so one over all the parts would grow with them."""


def _scan(store: Store, schema: pa.Schema, paths: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The files' rows in order, batch by batch, :data:`FILES_PER_SCAN` files at a time."""
    for i in range(0, len(paths), FILES_PER_SCAN):
        dataset = ds.dataset(list(paths[i:i + FILES_PER_SCAN]), schema=schema, format="parquet",
                             filesystem=store.fs)
        yield from dataset.to_batches(batch_size=SCAN_BATCH_ROWS)


def _stream_union(store: Store, name: str, paths: Sequence[str], sink: Any) -> int:
    """Stream table ``name`` of the parts into one Parquet file; return its rows.

    Write the parts' files of table ``name`` to ``sink`` (a local file path) as one Parquet
    file, batch by batch; returns its rows. Memory: one row group being built (at most
    :data:`ROW_GROUP_ROWS` rows, its batches combined every :data:`COMPACT_BATCHES`) and the
    scanner's read-ahead, whatever the number of parts. ``trials`` (one row per part) is sorted
    by start, so it is held whole (10k parts: a few MB).
    """
    schema = SCHEMAS[name]
    rows = 0
    pending: list[pa.RecordBatch] = []
    held = since = 0
    with pq.ParquetWriter(sink, schema) as writer:
        for batch in _scan(store, schema, paths):
            pending.append(batch)
            held, since = held + batch.num_rows, since + 1
            if since >= COMPACT_BATCHES:
                pending, since = pa.Table.from_batches(pending, schema=schema).combine_chunks().to_batches(), 0
            while name != "trials" and held >= ROW_GROUP_ROWS:  # a full row group: write it, keep the rest
                tbl = pa.Table.from_batches(pending, schema=schema)
                writer.write_table(tbl.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                rest = tbl.slice(ROW_GROUP_ROWS)
                pending, held, since = rest.to_batches(), rest.num_rows, 0
                rows += ROW_GROUP_ROWS
        tbl = pa.Table.from_batches(pending, schema=schema)
        if name == "trials" and tbl.num_rows:
            tbl = tbl.sort_by([("started_at", "ascending"), ("trial_id", "ascending")])
        if tbl.num_rows or not rows:  # (an empty union still gets its one empty row group, as write_table gives)
            writer.write_table(tbl, row_group_size=ROW_GROUP_ROWS)
            rows += tbl.num_rows
    return rows


def _union_paths(store: Store, name: str, files: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{path on the store's fs: row id}`` of the complete parts' files of table ``name``."""
    file = f"{name}.parquet"
    return {store.path(PARTS, t, file): t for t in complete_parts(store, files) if file in files[t]}


def _find_damaged(store: Store, paths: Mapping[str, str]) -> dict[str, Exception]:
    """``{path: error}`` of the files that do not read back (each read alone, one at a time)."""
    return {path: exc for path in paths if (exc := _unreadable(store, path)) is not None}


def rebuild_unions(store: Store, names: Sequence[str] = TABLES, say: Callable[[str], None] = _say) -> dict[str, int]:
    """Write the union tables from the complete parts, streaming; return rows per table.

    Write the union tables from the complete parts, streaming: each union is written batch
    by batch to a temporary file beside it (or, on an object store, a local one then copied up in
    one upload) and renamed over the old one, so memory stays bounded by a row group however
    many parts there are, and a reader sees the old union or the new one. Returns rows per table.

    A part with a file that does not read back is set aside (see :func:`set_aside_part`) and
    left out of every union (its rows belong together): the unions are then written again
    without it.
    """
    store.makedirs()
    for _ in range(2):  # a second pass only when damaged parts were found (and set aside)
        files = part_files(store)
        damaged: dict[str, dict[str, Exception]] = {}
        counts: dict[str, int] = {}
        with tempfile.TemporaryDirectory(prefix=".union-", dir=store.local_path() if store.local else None) as tmp:
            for name in names:
                paths = _union_paths(store, name, files)
                try:
                    counts[name] = _stream_union(store, name, list(paths), os.path.join(tmp, f"{name}.parquet"))
                except (pa.ArrowException, OSError, ValueError):
                    bad = _find_damaged(store, paths)
                    if not bad:
                        raise  # not a file's content: an I/O problem
                    for path, exc in bad.items():
                        damaged.setdefault(paths[path], {})[f"{name}.parquet"] = exc
            if damaged:
                for t, bad_files in sorted(damaged.items()):
                    set_aside_part(store, t, bad_files, list(files[t]), say)
                continue
            for name in names:
                _commit_union(store, os.path.join(tmp, f"{name}.parquet"), f"{name}.parquet")
        return counts
    raise RuntimeError("the parts changed while the unions were written")  # (set aside twice: a second writer)


def _commit_union(store: Store, local: str, file: str) -> None:
    """Put the finished union in place: a rename (atomic) beside it, or one streamed upload."""
    if store.local:
        with open(local, "rb+") as fh:  # (pyarrow created it as a plain open does, under the umask)
            os.fsync(fh.fileno())
        os.replace(local, store.path(file))
        return
    with open(local, "rb") as src, store.fs.open_output_stream(store.path(file)) as dst:  # one upload on close
        while chunk := src.read(8 << 20):
            dst.write(chunk)


def unions_current(store: Store, files: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """Tell whether the union tables hold exactly the complete parts.

    Whether the union tables hold exactly the complete parts: every union file present,
    ``trials.parquet`` has the complete parts' row ids, and (where the file system keeps
    times) is no older than any part's ``trials.parquet``.
    """
    if not all(store.exists(f"{name}.parquet") for name in TABLES):
        return False
    files = part_files(store) if files is None else files
    ids = complete_parts(store, files)
    try:
        with store.fs.open_input_file(store.path("trials.parquet")) as fh:
            union_ids = pq.read_table(fh, columns=["trial_id"])["trial_id"].to_pylist()
    except (pa.ArrowException, OSError, ValueError, KeyError):
        return False
    if sorted(union_ids) != ids:
        return False
    written = store.mtime("trials.parquet")
    newest = [m for t in ids if (m := files[t].get("trials.parquet")) is not None]
    return written is None or not newest or max(newest) <= written
