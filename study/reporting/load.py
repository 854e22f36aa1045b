"""Read a study: the Parquet tables, study.json and (optionally) the Optuna journal.

The study is a folder or a storage URI, as ``python -m study.run --storage`` takes them
(``s3://…``, ``gs://…``, ``mock://…`` through pyarrow's file systems, :class:`study.storage.Store`).
The union tables are read when they hold exactly the complete parts; while a study runs (the
driver writes them when it ends) or after a crash they are missing or older than ``parts/``,
and the report reads ``parts/`` itself, as one ``pyarrow.dataset`` per table (a part that does
not read back is left out, with a note). Nothing is written to the study.

Only pandas/pyarrow, optuna and torch-free study modules are used (no torch, Ray or
``mislas``), so a report can be made on a laptop from a copied results folder. Missing
optional files become empty tables plus a note in the report.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import pyarrow as pa
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from study import results, schema
from study.storage import Store
from study.tune_adapter import quiet_optuna

TRIALS_FILE = "trials.parquet"

# Every column of each table (study.schema); absent ones are added as nulls so that a study
# written by an older schema still renders.
TRIAL_COLUMNS = schema.columns("trials")
EPOCH_COLUMNS = schema.columns("epochs")
CLASS_COLUMNS = schema.columns("classes")
RELIABILITY_COLUMNS = schema.columns("reliability")
CONFIDENCE_COLUMNS = schema.columns("confidence")


class NoStudyError(Exception):
    """The directory holds no study (no trials.parquet)."""


class DamagedStudyError(NoStudyError):
    """A table of the study is damaged and no complete part holds its rows.

    A table the report needs does not read back, or is not one of ours (its columns), and no
    complete part holds its rows: one line naming the file (``study.report`` exits 2).
    """


# the columns without which a file is not the study's table of that name (a table written by an
# older schema lacks some of the others, which are then null)
KEY_COLUMNS = {"trials": ("trial_id", "dataset", "method", "status")}


@dataclass(frozen=True)
class OptunaInfo:
    """The persisted Optuna studies, or why there are none.

    The persisted Optuna studies (the study runner keeps one per data set, ``NAME:dataset``, in
    one journal), or why there are none; RUNNING trials listed for partial studies.
    """

    studies: dict[str, optuna.Study]
    note: str
    running: pd.DataFrame = field(default_factory=pd.DataFrame)
    states: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyData:
    """Everything the report reads, as loaded."""

    root: Path
    name: str
    settings: dict[str, object]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    classes: pd.DataFrame
    reliability: pd.DataFrame
    confidence: pd.DataFrame
    optuna: OptunaInfo
    notes: tuple[str, ...]
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)  # per test image (paired bootstrap)


def _with_columns(frame: pd.DataFrame, file: str, columns: tuple[str, ...], notes: list[str]) -> pd.DataFrame:
    absent = [name for name in columns if name not in frame.columns]
    if absent:
        notes.append(f"{file} lacks columns {', '.join(absent)} (treated as null).")
    for name in absent:
        frame[name] = None
    return frame


def _read_table(store: Store, file: str, columns: tuple[str, ...], notes: list[str]) -> pd.DataFrame:
    """Read one Parquet table of the study.

    A Parquet table with at least ``columns``; empty (with a note) if the file is absent;
    :class:`DamagedStudyError` if it does not read back or lacks its table's key columns.
    """
    if not store.exists(file):
        notes.append(f"{file} not found: the sections that need it are left out.")
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    data = store.read_bytes(file)  # (an I/O error propagates: the study is not damaged)
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0][:80] if str(exc) else ""
        raise DamagedStudyError(f"{store.uri(file)} does not read back as Parquet ({type(exc).__name__}: {first}) "
                                f"(allowed: the table study.run wrote, or its parts/)") from None
    name = file.removesuffix(".parquet")
    key = KEY_COLUMNS.get(name, ("trial_id",))
    if any(c not in frame.columns for c in key):
        found = ", ".join(map(str, frame.columns[:4])) + (", ..." if len(frame.columns) > 4 else "")
        raise DamagedStudyError(f"{store.uri(file)}: not a study's {name} table (columns {found or 'none'}; "
                                f"expected {', '.join(key)}, ...: docs/results-schema.md)")
    return _with_columns(frame, file, columns, notes)


def _read_tables(store: Store, notes: list[str]) -> dict[str, pd.DataFrame]:
    """Read the study's five tables, from the unions or from the parts.

    The five tables: the unions if they are current (or there are no parts), else ``parts/``
    (also where a union is damaged but complete parts hold its rows).
    """
    files = results.part_files(store)
    ids = results.complete_parts(store, files)
    wanted = {name: schema.columns(name) for name in schema.TABLES}
    if not ids or results.unions_current(store, files):
        try:
            return {name: _read_table(store, f"{name}.parquet", cols, notes) for name, cols in wanted.items()}
        except DamagedStudyError as exc:
            if not ids:
                raise
            notes.append(f"{exc}: read from parts/ instead.")
    tables, damaged = results.load_parts(store, set_aside=False)
    state = "older than" if store.exists(TRIALS_FILE) else "missing beside"
    notes.append(f"The union tables are {state} {len(ids)} complete parts: read from parts/ (a study still "
                 f"running, or one whose driver ended before writing them).")
    for trial_id, bad in sorted(damaged.items()):
        notes.append(f"Part {trial_id} left out: {', '.join(sorted(bad))} does not read back.")
    return {name: _with_columns(tables[name].to_pandas(), f"parts/*/{name}.parquet", cols, notes)
            for name, cols in wanted.items()}


def _normalise_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Fix dtypes the report relies on (flags as bool, β and metrics as float, times as UTC)."""
    out = trials.copy()
    for name in ("mixup", "is_paper_setting"):
        out[name] = out[name].astype("boolean").fillna(False).astype(bool)
    floats = [f.name for f in schema.TRIALS_SCHEMA if f.type == pa.float64()]
    for name in floats:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype(float)
    for name in ("started_at", "finished_at"):
        out[name] = pd.to_datetime(out[name], utc=True, errors="coerce")
    out["status"] = out["status"].astype(object).where(out["status"].notna(), "unknown").astype(str)
    out["variant"] = out["variant"].astype(object).where(out["variant"].notna(), None)  # null: not an ablation row
    return out


def _read_settings(store: Store, notes: list[str]) -> dict[str, object]:
    if not store.exists("study.json"):
        notes.append("study.json not found: study settings unknown.")
        return {}
    try:
        loaded = json.loads(store.read_bytes("study.json"))
    except (OSError, ValueError) as exc:
        notes.append(f"study.json could not be read ({exc}).")
        return {}
    return loaded if isinstance(loaded, dict) else {"settings": loaded}


def _study_name(store: Store, settings: dict[str, object], trials: pd.DataFrame) -> str:
    if isinstance(settings.get("name"), str):
        return str(settings["name"])
    names = trials["study"].dropna().unique() if "study" in trials else []
    return str(names[0]) if len(names) == 1 else posixpath.basename(store.uri().rstrip("/"))


def _params_text(params: dict[str, object]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _running_frame(studies: dict[str, optuna.Study]) -> pd.DataFrame:
    rows = [
        {"optuna_study": name, "optuna_number": t.number, "started_at": t.datetime_start,
         "params": _params_text(t.params)}
        for name, study in studies.items()
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    ]
    return pd.DataFrame(rows, columns=["optuna_study", "optuna_number", "started_at", "params"])


def _in_memory_copy(study: optuna.Study) -> optuna.Study:
    """The same trials in an in-memory study (RUNNING ones included), detached from the file."""
    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    copy.add_trials(study.get_trials(deepcopy=True))
    return copy


def load_optuna(root: Path | str | Store) -> OptunaInfo:
    """Load the study's Optuna journal without taking its lock.

    Open every study in ``optuna.log``, read-only: a copy of the file is opened, so the live
    study's lock is never taken and a read-only results folder (or an object store) works.
    """
    store = root if isinstance(root, Store) else Store(root)
    if not store.exists("optuna.log"):
        return OptunaInfo({}, "optuna.log not found")
    tmp = Path(tempfile.mkdtemp(prefix="study-report-"))
    try:
        copy = tmp / "optuna.log"
        copy.write_bytes(store.read_bytes("optuna.log"))
        with quiet_optuna():
            storage = JournalStorage(JournalFileBackend(str(copy)))
            names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
            # Materialise the trials now: the temporary copy is removed below.
            studies = {n: _in_memory_copy(optuna.load_study(study_name=n, storage=storage)) for n in names}
    except Exception as exc:  # noqa: BLE001 - any unreadable journal is reported, not fatal
        return OptunaInfo({}, f"optuna.log could not be read ({type(exc).__name__}: {exc})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not studies:
        return OptunaInfo({}, "optuna.log holds no Optuna study")
    states: dict[str, int] = {}
    for study in studies.values():
        for trial in study.get_trials(deepcopy=False):
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return OptunaInfo(studies, "", _running_frame(studies), states)


def load_study(root: Path | str | os.PathLike[str] | Store) -> StudyData:
    """Load a study from a folder, a storage URI or a :class:`Store`.

    Load a study (a folder, a storage URI or a :class:`Store`); :class:`NoStudyError` when it
    holds neither ``trials.parquet`` nor a complete part. A URI that cannot be opened raises
    :class:`study.storage.StorageError`.
    """
    store = root if isinstance(root, Store) else Store(root)
    if not store.exists(TRIALS_FILE) and not results.complete_parts(store):
        where = store.uri()
        raise NoStudyError(f"no study in {where}: expected {TRIALS_FILE} (or parts/*/{TRIALS_FILE}) under {where}")
    notes: list[str] = []
    settings = _read_settings(store, notes)
    tables = _read_tables(store, notes)
    trials = _normalise_trials(tables["trials"])
    return StudyData(
        root=Path(store.root) if store.local else Path(store.uri()),
        name=_study_name(store, settings, trials),
        settings=settings,
        trials=trials,
        epochs=tables["epochs"],
        classes=tables["classes"],
        reliability=tables["reliability"],
        confidence=tables["confidence"],
        optuna=load_optuna(store),
        predictions=tables["predictions"],
        notes=tuple(notes),
    )
