"""What a rerun of a study finds in its storage, what it trusts, and what it reruns: one ResumePlan.

:func:`plan` computes it once, in the driver, before Ray starts; nothing else decides resume
matters. What it checks, in order:

* **Tune's state** (``tune/experiment_state-*.json``, ``search_gen_state-*.json``,
  ``searcher-state-*.json``). Tune overwrites these in place, so a full disk leaves them
  truncated (and Tune then silently starts afresh, losing the unfinished trials). The driver
  keeps its own copy of the last state that read back whole (``tune/.whole.json``, one atomic
  write, taken after each recorded trial and every half minute, see :func:`keep_whole_state`); a state that does not
  read back is set aside (``.damaged-<stamp>``) and that copy put back. Trials that ended since
  are restarted by Tune and told their rows (below); trials the copy does not know are asked again.
* **The parts** (``parts/<row id>/``): a complete part with a file that does not read back, or
  that reads back in another table's schema (study.schema), is set aside and its row written
  again from the trial's checkpoint (the driver's reconcile step); the rest are trusted rows.
* **The Optuna journal**: checked against the trusted rows, rebuilt when damaged (study.journal).
* **What reruns**: Tune resumes its unfinished trials; errored trials too when one of them has
  no rows (a storage fault ended it: its rows were never written). A trial Tune starts whose
  rows are all written is told them (:meth:`ResumePlan.reports`, through the trial's context)
  and reports them back without training: the trial never reads the parts.

A storage fault during the run (no space left) is noted by :func:`note_storage_fault` and ends
the study as Ctrl-C would (Tune keeps its trials unfinished); the driver then prints one line.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import pickletools
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mislas.errors import UsageError
from study import journal, schema
from study import results as results_mod
from study.storage import Store, stamp

TUNE = "tune"
WHOLE = ".whole.json"  # tune/.whole.json: {file name: base64 bytes} of the last Tune state that read back whole
STATE_PREFIXES = ("experiment_state-", "search_gen_state-", "searcher-state-")
NO_SPACE = ("No space left on device", "[Errno 28]", "errno 28")


# --- storage faults during the run --------------------------------------------------------------

_FAULTS: list[str] = []  # where a write found no space left (this driver process)


def is_no_space(error: BaseException | str) -> bool:
    """Whether ``error`` (an exception, or a trial's error text) is a full disk."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return any(token in str(error) for token in NO_SPACE)


def note_storage_fault(where: str) -> None:
    """Remember a full disk at ``where`` and end the run as Ctrl-C would (once).

    Tune then saves its state and returns with the trials unfinished, so a rerun continues them.
    """
    first = not _FAULTS
    _FAULTS.append(where)
    if first:
        os.kill(os.getpid(), signal.SIGINT)


def reset_storage_faults() -> None:
    """Forget the faults of an earlier run in this process (a driver called twice in one process)."""
    _FAULTS.clear()


def storage_fault() -> str | None:
    """Where the first full disk of this run was met (None: none)."""
    return _FAULTS[0] if _FAULTS else None


def no_space_line(where: str, rows: int) -> str:
    """The driver's one line for a full disk at ``where`` with ``rows`` rows written."""
    written = f"the {rows} rows written are" if rows != 1 else "the row written is"
    return f"{where}: no space left on device; {written} kept: free space there and rerun the same command to continue"


# --- Tune's state, and the driver's whole copy of it --------------------------------------------

def _state_names(results: Store) -> list[str]:
    return [n for n in results.listdir(TUNE) if n.startswith(STATE_PREFIXES) and n.endswith(".json")]


def _newest(names: Iterable[str]) -> dict[str, str]:
    """The newest file of each kind (Tune reads the newest by name)."""
    out: dict[str, str] = {}
    for n in sorted(names):
        out[next(p for p in STATE_PREFIXES if n.startswith(p))] = n
    return out


def _reads_back(data: bytes) -> bool:
    """Whether a state file is whole: JSON that parses, or a pickle stream that ends.

    ``search_gen_state-*`` is Ray's pickle despite its name: its opcodes are walked to their STOP
    by ``pickletools`` without building anything (nothing is unpickled).
    """
    if data[:1] == b"\x80":
        try:
            return any(op.name == "STOP" for op, _, _ in pickletools.genops(data))
        except ValueError:
            return False
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


SAME_SYNC_S = 5.0  # Tune uploads its three state files together: their times this close


def _times(results: Store, names: Iterable[str]) -> list[float] | None:
    times = [results.mtime(TUNE, n) for n in names]
    return None if any(m is None for m in times) else [m.timestamp() for m in times if m is not None]


def keep_whole_state(results: Store) -> bool:
    """Copy Tune's newest state into ``tune/.whole.json`` if it reads back whole; return whether it did.

    Every file must read back and (where the storage keeps times) be of one upload, not changed
    while read (Tune uploads them in the background). One atomic write: the copy is the old one
    or the new one.
    """
    newest = _newest(_state_names(results))
    if len(newest) != len(STATE_PREFIXES):
        return False
    before = _times(results, newest.values())
    data = {n: results.read_bytes(TUNE, n) for n in newest.values()}
    if not all(_reads_back(b) for b in data.values()):
        return False
    if before is not None and (before != _times(results, newest.values()) or max(before) - min(before) > SAME_SYNC_S):
        return False
    copy = {n: base64.b64encode(b).decode("ascii") for n, b in data.items()}
    results.write_bytes(json.dumps(copy).encode(), TUNE, WHOLE)
    return True


def _whole_copy(results: Store) -> dict[str, bytes] | None:
    if not results.exists(TUNE, WHOLE):
        return None
    try:
        saved = json.loads(results.read_bytes(TUNE, WHOLE))
        data = {str(n): base64.b64decode(str(text), validate=True) for n, text in saved.items()}
    except (ValueError, AttributeError):  # (binascii.Error is a ValueError)
        return None
    return data if all(_reads_back(b) for b in data.values()) else None


def recover_tune_state(results: Store, say: Callable[[str], None]) -> bool:
    """Whether Tune's state can be restored, the whole copy put back where it does not read back.

    The files that do not are set aside as ``<file>.damaged-<stamp>``, with every state file
    beside them (Tune reads the newest of each kind).
    """
    names = _state_names(results)
    newest = _newest(names)
    if not newest:
        return False
    bad = sorted(n for n in newest.values() if not _reads_back(results.read_bytes(TUNE, n)))
    if not bad:
        return True
    suffix = f".damaged-{stamp()}"
    for n in names:
        results.set_aside(suffix, TUNE, n)
    copy = _whole_copy(results)
    what = f"Tune's state {results.uri(TUNE, bad[0])} does not read back (truncated?): set aside as {bad[0]}{suffix}"
    if copy is None:
        say(f"{what}, and there is no whole copy of it ({results.uri(TUNE, WHOLE)})")
        return False
    for n, data in copy.items():
        results.write_bytes(data, TUNE, n)
    say(f"{what}; restored the copy the driver kept when it last read back whole ({results.uri(TUNE, WHOLE)}): "
        f"trials that ended since are reported from their rows, the others run again")
    return True


# --- the parts ----------------------------------------------------------------------------------

def schema_problem(file_schema: Any, name: str) -> str | None:
    """Why a part file of table ``name`` is not ours (None: it is).

    Every column must be one of the table's (study.schema) with its type, ``trial_id`` among
    them; columns added to the table since the file was written may be missing.
    """
    ours = schema.SCHEMAS[name]
    if "trial_id" not in file_schema.names:
        return f"it has no trial_id column, so it is not a {name} table"
    for f in file_schema:
        if f.name not in ours.names:
            return f"its column {f.name!r} is not one of the {name} table's"
        want = ours.field(f.name).type
        if f.type != want and str(f.type) != "null":
            return f"its column {f.name!r} is {f.type}, the {name} table's is {want}"
    return None


def set_aside_foreign_parts(results: Store, say: Callable[[str], None]) -> list[str]:
    """Set aside every complete part with a file that reads back in another schema; return their ids.

    Such a file would pass into the unions as nulls. Their rows are written again.
    """
    files = results_mod.part_files(results)
    foreign = []
    for t in results_mod.complete_parts(results, files):
        bad: dict[str, Exception] = {}
        for file in sorted(files[t]):
            name = file.removesuffix(".parquet")
            if not file.endswith(".parquet") or name not in schema.SCHEMAS:
                continue
            try:
                problem = schema_problem(pq.read_schema(results.path(results_mod.PARTS, t, file),
                                                        filesystem=results.fs), name)
            except Exception:  # noqa: BLE001 - does not read back: study.results sets it aside
                continue
            if problem is not None:
                bad[file] = ValueError(f"another schema: {problem}")
        if bad:
            results_mod.set_aside_part(results, t, bad, list(files[t]), say)
            foreign.append(t)
    return foreign


# --- the plan -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResumePlan:
    """What this run of the study starts from (see the module docstring)."""

    tune_path: str  # Tune's experiment folder (<results>/tune)
    restore: bool  # Tune's state is restored (False: a new Tune experiment)
    rows: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # trusted rows by row id
    rerun_errored: bool = False  # an errored trial has no rows: Tune resumes errored trials too

    def reports(self) -> dict[str, dict[str, Any]]:
        """What a trial whose rows are written reports back, per row id (the trial's context)."""
        out = {}
        for tid, row in self.rows.items():
            out[tid] = {**{f"val_{m}": row.get(f"val_{m}") for m in schema.METRICS},
                        **{f"test_{m}": row.get(f"test_{m}") for m in schema.METRICS},
                        "diverged": int(row.get("status") == schema.DIVERGED),
                        "failed": int(row.get("status") == schema.FAILED),
                        "epochs_run": int(row.get("epochs_run") or 0),
                        "complete": row.get("status") == schema.COMPLETE}
        return out


def journal_spec(s: Any) -> journal.JournalSpec:
    """What the journal check needs of the study (``s``: study.settings.StudySettings)."""
    return journal.JournalSpec(names={d: f"{s.name}:{d}" for d in s.spaces},
                               directions=["maximize" if m == "max" else "minimize" for m in s.mode],
                               metrics=s.metric, spaces=dict(s.spaces))


def _epochs(tables: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """Per row, the single objective's per-epoch values (the journal's intermediate values)."""
    epochs: dict[str, list[tuple[int, float]]] = {}
    if len(metrics) == 1 and metrics[0] in tables["epochs"].column_names:
        for e in tables["epochs"].select(["trial_id", "epoch", metrics[0]]).to_pylist():
            epochs.setdefault(e["trial_id"], []).append((e["epoch"], e[metrics[0]]))
    return epochs


def errored_without_rows(tune_path: str, rows: Mapping[str, Any]) -> bool:
    """Whether Tune's state holds an errored trial some of whose rows are not written."""
    from ray.tune import ExperimentAnalysis

    for trial in ExperimentAnalysis(tune_path).trials:
        spec = (trial.config or {}).get("spec")
        if trial.status == "ERROR" and spec is not None and not all(
                i in rows for i in spec.member_ids(trial.trial_id)):
            return True
    return False


def plan(s: Any, results: Store, local_cache: Path, say: Callable[[str], None]) -> ResumePlan:
    """The plan of this run (``s``: study.settings.StudySettings); sets aside what is damaged.

    Raises :class:`UsageError` (one line) where the study cannot go on.
    """
    from ray import tune

    tune_path = results.uri(TUNE)
    restore = results.exists(TUNE) and recover_tune_state(results, say) and tune.Tuner.can_restore(tune_path)
    if not restore:
        if results_mod.complete_parts(results):
            raise UsageError(f"--name {s.name}: {results.uri()} holds trial results but no resumable Tune state; "
                             f"pick a new --name")
        journal.set_aside_stale(results, local_cache)
        return ResumePlan(tune_path=tune_path, restore=False)
    print(f"[study] resuming {s.name} from {tune_path}", file=sys.stderr, flush=True)
    set_aside_foreign_parts(results, say)
    tables, _ = results_mod.load_parts(results, set_aside=True, say=say)
    rows = {r["trial_id"]: r for r in tables["trials"].to_pylist()}
    spec = journal_spec(s)
    if spec.names:  # a MiSLAS search: its Optuna studies
        line = journal.check_and_repair(results, local_cache, spec, list(rows.values()), _epochs(tables, spec.metrics))
        if line:
            say(line)
    keep_whole_state(results)
    return ResumePlan(tune_path=tune_path, restore=True, rows=rows,
                      rerun_errored=errored_without_rows(tune_path, rows))
