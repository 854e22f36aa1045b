"""Read a study directory: the Parquet tables, study.json and (optionally) the Optuna journal.

Only pandas/pyarrow and optuna are used, so a report can be made on a laptop from a copied
results folder. Missing optional files become empty tables plus a note in the report.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from study import schema

TRIALS_FILE = "trials.parquet"

# Every column of each table (study.schema); absent ones are added as nulls so that a study
# written by an older schema still renders.
TRIAL_COLUMNS = schema.columns("trials")
EPOCH_COLUMNS = schema.columns("epochs")
CLASS_COLUMNS = schema.columns("classes")
RELIABILITY_COLUMNS = schema.columns("reliability")
CONFIDENCE_COLUMNS = schema.columns("confidence")


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO logs ("A new study created…") and warnings while the report uses it."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(previous)


class NoStudyError(Exception):
    """The directory holds no study (no trials.parquet)."""


@dataclass(frozen=True)
class OptunaInfo:
    """The persisted Optuna studies (the study runner keeps one per data set, ``NAME:dataset``, in
    one journal), or why there are none; RUNNING trials listed for partial studies."""

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


def _read_table(path: Path, columns: tuple[str, ...], notes: list[str]) -> pd.DataFrame:
    """A Parquet table with at least ``columns``; empty (with a note) if the file is absent."""
    if not path.is_file():
        notes.append(f"{path.name} not found: the sections that need it are left out.")
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    frame = pd.read_parquet(path)
    absent = [name for name in columns if name not in frame.columns]
    if absent:
        notes.append(f"{path.name} lacks columns {', '.join(absent)} (treated as null).")
    for name in absent:
        frame[name] = None
    return frame


def _normalise_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Fix dtypes the report relies on (flags as bool, β and metrics as float, times as UTC)."""
    out = trials.copy()
    for name in ("mixup", "is_paper_setting"):
        out[name] = out[name].astype("boolean").fillna(False).astype(bool)
    floats = [f.name for f in schema.TRIALS_SCHEMA if f.type == schema.pa.float64()]
    for name in floats:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype(float)
    for name in ("started_at", "finished_at"):
        out[name] = pd.to_datetime(out[name], utc=True, errors="coerce")
    out["status"] = out["status"].astype(object).where(out["status"].notna(), "unknown").astype(str)
    out["variant"] = out["variant"].astype(object).where(out["variant"].notna(), None)  # null: not an ablation row
    return out


def _read_settings(root: Path, notes: list[str]) -> dict[str, object]:
    path = root / "study.json"
    if not path.is_file():
        notes.append("study.json not found: study settings unknown.")
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"study.json could not be read ({exc}).")
        return {}
    return loaded if isinstance(loaded, dict) else {"settings": loaded}


def _study_name(root: Path, settings: dict[str, object], trials: pd.DataFrame) -> str:
    if isinstance(settings.get("name"), str):
        return str(settings["name"])
    names = trials["study"].dropna().unique() if "study" in trials else []
    return str(names[0]) if len(names) == 1 else root.resolve().name


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


def load_optuna(root: Path) -> OptunaInfo:
    """Open every study in ``optuna.log``, read-only: a copy of the file is opened, so the live
    study's lock is never taken and a read-only results folder works."""
    path = root / "optuna.log"
    if not path.is_file():
        return OptunaInfo({}, "optuna.log not found")
    tmp = Path(tempfile.mkdtemp(prefix="study-report-"))
    try:
        copy = tmp / "optuna.log"
        shutil.copyfile(path, copy)
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


def load_study(root: Path) -> StudyData:
    """Load a study directory; :class:`NoStudyError` when it holds no ``trials.parquet``."""
    root = Path(root)
    if not (root / TRIALS_FILE).is_file():
        raise NoStudyError(f"no study in {root}: expected {TRIALS_FILE} under {root}")
    notes: list[str] = []
    settings = _read_settings(root, notes)
    trials = _normalise_trials(_read_table(root / TRIALS_FILE, TRIAL_COLUMNS, notes))
    name = _study_name(root, settings, trials)
    info = load_optuna(root)
    return StudyData(
        root=root,
        name=name,
        settings=settings,
        trials=trials,
        epochs=_read_table(root / "epochs.parquet", EPOCH_COLUMNS, notes),
        classes=_read_table(root / "classes.parquet", CLASS_COLUMNS, notes),
        reliability=_read_table(root / "reliability.parquet", RELIABILITY_COLUMNS, notes),
        confidence=_read_table(root / "confidence.parquet", CONFIDENCE_COLUMNS, notes),
        optuna=info,
        notes=tuple(notes),
    )
