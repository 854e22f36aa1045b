"""The one seam between the study and Ray Tune's / Optuna's objects.

Why one module: a Ray or Optuna upgrade that moves an internal breaks only this file, and its
tests (tests/study/test_tune_adapter.py) say so on real objects. The rest of ``study/`` uses
public APIs only (``python -m study.tune_adapter`` counts the private uses left outside).

Public stand-ins (no private member touched):

* :func:`trial_storage_id` -- the storage-wide id of a study's trial, from Optuna's public
  ``BaseStorage`` methods (``FrozenTrial`` and ``Trial`` keep that id private).
* :func:`attach_trial` -- an :class:`optuna.trial.Trial` for a trial an earlier process asked,
  by Optuna's public constructor (what ``Study.ask`` builds), so a resumed searcher can report
  to, suggest on and tell a trial it did not ask itself.
* :func:`quiet_optuna` -- Optuna's public logging verbosity and Python's warnings filter,
  restored on leaving (shared by the driver's journal code and the report).
* :func:`trial_to_json` / :func:`trial_from_json` -- a trial's asked state as plain JSON
  (``optuna.distributions.distribution_to_json``), so the searcher's state file is data.

Private members, each wrapped (there is no public API for them in Ray 2.60 - 2.x tested):

* :func:`mlflow_trial_runs` -- ``MLflowLoggerCallback._trial_runs``.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import FrozenTrial


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO logs and warnings within the block.

    Silence Optuna's INFO logs ("A new study created...") and warnings while the journal is
    replayed or rebuilt (study.journal) or read by the report (study.reporting).
    """
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(previous)


# --- typed views of Ray's untyped public calls ------------------------------------------------


def cluster_resources() -> dict[str, float]:
    """``ray.cluster_resources()`` (public, untyped in Ray): resource name -> total on the cluster."""
    import ray

    return {str(k): float(v) for k, v in ray.cluster_resources().items()}  # type: ignore[no-untyped-call]


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()`` (public, untyped in Ray), only the nodes that are alive."""
    import ray

    return [dict(n) for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]


def node_ip() -> str:
    """``ray.util.get_node_ip_address()`` (public, untyped in Ray): this process's node IP."""
    import ray.util

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


# --- public stand-ins -------------------------------------------------------------------------


def trial_storage_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage-wide id of trial ``number`` of ``study_name`` (public BaseStorage methods).

    Optuna numbers trials per study but addresses them in the storage by an id of its own;
    ``FrozenTrial._trial_id`` is private, these two lookups are the public way to it.
    """
    study_id = storage.get_study_id_from_name(study_name)
    return int(storage.get_trial_id_from_study_id_trial_number(study_id, number))


def attach_trial(study: optuna.Study, trial_id: int) -> optuna.trial.Trial:
    """A live trial handle on an existing (asked) trial: ``optuna.trial.Trial(study, trial_id)``.

    Stands in for keeping the ``Trial`` that ``Study.ask`` returned in a pickle: Optuna's public
    constructor rebuilds the same handle from the storage, which holds all of its state.
    """
    return optuna.trial.Trial(study, trial_id)


def trial_to_json(trial: FrozenTrial, trial_id: int) -> dict[str, Any]:
    """What a journal rebuild needs of an asked trial, as JSON (see study.journal.Asked)."""
    return {
        "trial_id": int(trial_id), "number": int(trial.number), "params": dict(trial.params),
        "distributions": {n: distribution_to_json(d) for n, d in trial.distributions.items()},
        "user_attrs": dict(trial.user_attrs), "system_attrs": dict(trial.system_attrs),
        "intermediate_values": {str(k): float(v) for k, v in trial.intermediate_values.items()},
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
    }


def trial_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`study.journal.Asked` (less ``study``) from :func:`trial_to_json`."""
    start = data.get("datetime_start")
    return {
        "trial_id": int(data["trial_id"]), "number": int(data["number"]), "params": dict(data["params"]),
        "distributions": {n: json_to_distribution(d) for n, d in data["distributions"].items()},
        "user_attrs": dict(data["user_attrs"]), "system_attrs": dict(data["system_attrs"]),
        "intermediate_values": {int(k): float(v) for k, v in data["intermediate_values"].items()},
        "datetime_start": datetime.fromisoformat(start) if start else None,
    }


# --- private members, wrapped ------------------------------------------------------------------


def mlflow_trial_runs(callback: Any) -> dict[Any, str]:
    """Ray's ``MLflowLoggerCallback`` map Tune trial -> MLflow run id (``_trial_runs``).

    Stands in for: ``MLflowLoggerCallback.log_trial_start`` (public), which logs ``trial.config``
    as it is (our config is one ``spec`` object); logging the flat parameters instead means
    starting the run ourselves and registering it where Ray's ``log_trial_result`` and
    ``log_trial_end`` look it up. Ray has no public accessor for that map.
    """
    runs: dict[Any, str] = callback._trial_runs
    return runs


# --- the count --------------------------------------------------------------------------------

# Members of Ray's and Optuna's objects that are not public (those the study has used).
PRIVATE_NAMES = ("_ot_trials", "_ot_study", "_completed_trials", "_trial_info", "_num_stopped",
                 "_experiment_analysis", "_trial_id", "_study_id", "_storage", "_backend", "_file_path",
                 "_cached_frozen_trial", "_metric", "_mode", "_start_logging_actor", "_trial_runs")
_USE = re.compile(r"""(?:\.|["'])(""" + "|".join(PRIVATE_NAMES) + r")\b")


def private_uses(root: Path) -> list[tuple[str, int, str]]:
    """(file, line, name) of every use of :data:`PRIVATE_NAMES` under ``root`` outside this module.

    A use is an attribute access (``x._name``) or a ``getattr`` string (``"_name"``); comments
    are left out.
    """
    out: list[tuple[str, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            out.extend((str(path), n, m.group(1)) for m in _USE.finditer(code))
    return out


if __name__ == "__main__":
    found = private_uses(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
    for where in found:
        print(*where, sep=":")
    print(f"{len(found)} private uses of Ray/Optuna members outside study/tune_adapter.py")
