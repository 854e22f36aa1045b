"""Experiment tracking for a study: TensorBoard, MLflow and W&B through Ray Tune's own loggers.

``--log tensorboard,mlflow,wandb`` turns into Ray Tune logger callbacks (``RunConfig(callbacks=
...)``) that run in the driver, beside the study's own ``ResultsCallback``: every result a trial
reports (``val_acc``, ``val_ece``, ``epoch``, ``final``, ``g<k>_*`` ...) becomes one step of that
trial's run in each tracker, and the trial's :class:`study.records.TrialSpec` becomes readable
parameters (:func:`spec_params`). Why Tune's callbacks and not tracking calls in the trainable:
they see every trial, including those stopped early or failed, need no change to the training
code, and the trial workers never talk to a tracking server.

What each tracker adds (Ray 2.60, ``ray/tune/utils/callback.py``):

- ``tensorboard``: Tune already adds a ``TBXLoggerCallback`` of its own to every run when
  tensorboardX imports (``ray[tune]`` depends on it), unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``;
  it writes ``events.out.tfevents.*`` (scalars under ``ray/tune/<metric>``, step =
  ``training_iteration``) into each trial's folder, ``<storage>/<name>/tune/<trial>/`` (first
  into the driver's staging folder ``/tmp/ray/session_*/artifacts/...``, synced to the storage
  with the experiment's state and at the end). ``--log tensorboard`` passes a subclass of it
  instead (Tune then adds no second one), which (1) fails before Ray starts when tensorboardX is
  missing, where Tune would only log a warning and write nothing; (2) writes even under
  ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``; (3) fills TensorBoard's HPARAMS tab with the
  spec's parameters (Tune's own drops the whole ``spec``: not a str/number).
- ``mlflow``: ``MLflowLoggerCallback`` to ``$MLFLOW_TRACKING_URI`` when set, else to a SQLite
  store in the study folder, ``sqlite:///<absolute storage>/<name>/mlflow.db`` (MLflow 3.17 refuses
  the old ``./mlruns`` file store unless ``MLFLOW_ALLOW_FILE_STORE=true``); experiment = study name,
  one run per Tune trial (run name = trial name, tags ``ray_trial_id`` and ``study``), no
  artifacts (the study's results are in Parquet already; the experiment's artifact root is
  ``<storage>/<name>/mlartifacts`` all the same, not the driver's working directory). The
  client (mlflow-skinny) logs; ``mlflow ui`` needs the full ``mlflow`` package.
- ``wandb``: ``WandbLoggerCallback``, project = ``wandb_project`` (the CLI's option) or
  ``$WANDB_PROJECT`` or the study name, group = study name, one run per trial (run id = Tune
  trial id). ``WANDB_MODE=offline`` is honoured (no API key needed; ``wandb sync`` later; online,
  ``wandb login`` or ``$WANDB_API_KEY``); the runs are written under ``<storage>/<name>/wandb/``
  (``$WANDB_DIR`` overrides it), by one small logging actor per running trial on the driver's node.

This module imports neither torch nor Ray nor any tracker at import time: the command line
parses and checks ``--log`` (:func:`parse_trackers`, :func:`check_installed`) before anything
heavy is loaded. The callback classes are built on first use (:func:`logger_callbacks`).

Note for a resumed study: ``Tuner.restore`` takes the callbacks from the pickled run
configuration of the first run (``tune/tuner.pkl``), so the trackers are those of the first run.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mislas.errors import UsageError

TRACKERS: tuple[str, ...] = ("tensorboard", "mlflow", "wandb")

# tracker -> the Python package it needs (the ``tracking`` extra installs all three; ``mlflow``
# comes from the mlflow-skinny distribution there, which has the client and the SQL store)
REQUIRES: dict[str, str] = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
# (the package is not on PyPI: from a checkout, or the built wheel: "mislas_study-*.whl[tracking]")
EXTRA_INSTALL = 'pip install ".[tracking]" (from the repository, or the wheel with [tracking])'

MLFLOW_DB = "mlflow.db"  # the default MLflow store, in the study folder
MLFLOW_ARTIFACTS = "mlartifacts"  # its experiment's artifact root (nothing is logged there: no artifacts)
WANDB_FOLDER = "wandb"  # W&B's own folder name under its ``dir``

ParamValue = str | int | float | bool


def parse_trackers(text: str) -> tuple[str, ...]:
    """``--log``'s value: comma-separated tracker names, de-duplicated in order; ``""`` is none."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in TRACKERS:
            raise UsageError(f"--log: unknown tracker {part.strip()!r}; allowed: {', '.join(TRACKERS)}")
        if name not in names:
            names.append(name)
    return tuple(names)


def check_installed(trackers: Iterable[str]) -> None:
    """Raise :class:`UsageError` for the first tracker whose Python package is missing.

    Called before Ray starts, so that a missing package costs a one-line error and not a
    cluster start-up; ``find_spec`` looks the package up without importing it.
    """
    for name in trackers:
        if importlib.util.find_spec(REQUIRES[name]) is None:
            raise UsageError(f"--log {name} needs the {REQUIRES[name]} package: {EXTRA_INSTALL}")


# --- parameters ------------------------------------------------------------------------------

def spec_params(spec: Any) -> dict[str, ParamValue]:
    """A :class:`study.records.TrialSpec` as flat, readable tracker parameters.

    Always ``dataset``, ``method``, ``mixup``, ``seed``, ``group_size``; ``shift_bn`` for a
    baseline run in a given BN mode; per member its MiSLAS knobs (``Stage2Setting.params()``:
    ``p`` only for the exp form), Optuna trial number, paper-setting flag and ablation row:
    as they are for a trial of one member, under ``g<k>_`` for a group (the prefix the trial's
    metrics use, see study.groups). ``None`` values are left out (trackers want scalars).
    """
    out: dict[str, Any] = {"dataset": spec.dataset, "method": spec.method, "mixup": spec.mixup, "seed": spec.seed,
                           "group_size": len(spec.members), "shift_bn": spec.shift_bn,
                           "optuna_study": spec.optuna_study}
    for k, member in enumerate(spec.members):
        prefix = f"g{k}_" if spec.grouped else ""
        values: dict[str, Any] = dict(member.setting.params()) if member.setting is not None else {}
        values.update(optuna_trial=member.optuna_trial_number, variant=member.variant)
        if member.is_paper_setting:
            values["is_paper_setting"] = True
        out.update({prefix + name: v for name, v in values.items()})
    return {name: v for name, v in out.items() if v is not None}


def trial_params(config: Mapping[str, Any]) -> dict[str, ParamValue]:
    """A trial's Tune config as tracker parameters.

    A trial's Tune config as tracker parameters: a ``TrialSpec`` (the study's ``{"spec": ...}``)
    flattened by :func:`spec_params`, scalars kept, anything else as its ``str``.
    """
    from study.records import TrialSpec  # only when a trial exists: the driver has imported it then

    out: dict[str, ParamValue] = {}
    for key, value in config.items():
        if isinstance(value, TrialSpec):
            out.update(spec_params(value))
        elif isinstance(value, str | int | float | bool):
            out[key] = value
        elif value is not None:
            out[key] = str(value)
    return out


# --- where things go -------------------------------------------------------------------------

def mlflow_tracking_uri(results_dir: str | None) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a SQLite store in the study folder.

    A study on remote storage (``results_dir`` None) has no local folder to hold the store, and
    a store in the driver's working directory would be lost with it: it needs a tracking server.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if results_dir is None:
        raise UsageError("--log mlflow: the study's storage is remote; set MLFLOW_TRACKING_URI to a tracking server")
    return f"sqlite:///{Path(results_dir).resolve() / MLFLOW_DB}"


def wandb_dir(results_dir: str | None) -> str | None:
    """The folder W&B writes into.

    The folder W&B writes its ``wandb/`` folder into: ``$WANDB_DIR``, else the study folder;
    None (remote storage) leaves it to Tune's trial folder (synced with the experiment).
    """
    return os.environ.get("WANDB_DIR") or results_dir


# --- the callbacks -----------------------------------------------------------------------------
# Subclasses of Ray's loggers, built on first use so that importing this module imports no Ray
# or tracker. Each overrides only where Ray reads ``trial.config`` to log parameters.

@functools.cache
def _tbx_class() -> type:
    from ray.tune.logger import TBXLoggerCallback

    class SpecTBXLoggerCallback(TBXLoggerCallback):
        """Tune's TensorBoard logger, with the spec's parameters in the HPARAMS tab."""

        def _try_log_hparams(self, trial: Any, result: dict[str, Any]) -> None:
            from tensorboardX.summary import hparams

            writer = self._trial_writer[trial].file_writer
            try:
                for summary in hparams(hparam_dict=trial_params(trial.config), metric_dict=result):
                    writer.add_summary(summary)
            except Exception:  # as Ray's: a trial's end is not the place to fail over a TensorBoard tab
                logging.getLogger(__name__).exception("TensorBoard: could not write the trial's hparams")

    return SpecTBXLoggerCallback


@functools.cache
def _mlflow_class() -> type:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from study.tune_adapter import mlflow_trial_runs

    class SpecMLflowLoggerCallback(MLflowLoggerCallback):
        """Ray's MLflow logger; the run's parameters are :func:`trial_params`, not ``str(spec)``.

        Ray (2.60) logs ``trial.config`` as is, i.e. one parameter ``spec`` holding the spec's
        short label. Same run handling as Ray's ``log_trial_start``, plus a ``ray_trial_id`` tag
        (the ``trial_id`` of trials.parquet). Parameters are logged at the trial's start (a
        restarted trial logs the same values again, which MLflow accepts).
        """

        def __init__(self, *args: Any, artifact_location: str | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.artifact_location = artifact_location

        def setup(self, *args: Any, **kwargs: Any) -> None:
            if self.artifact_location:
                # MLflow would root a new experiment's artifacts in the driver's working directory
                # (./mlruns); created here first, Ray's setup then finds the experiment by name
                self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri,
                                              experiment_name=self.experiment_name,
                                              tracking_token=self.tracking_token,
                                              artifact_location=self.artifact_location)
            super().setup(*args, **kwargs)  # type: ignore[no-untyped-call]

        def log_trial_start(self, trial: Any) -> None:
            runs = mlflow_trial_runs(self)
            if trial not in runs:
                tags = {**(self.tags or {}), "trial_name": str(trial), "ray_trial_id": trial.trial_id}
                run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
                runs[trial] = run.info.run_id
            self.mlflow_util.log_params(run_id=runs[trial], params_to_log=trial_params(trial.config))

    return SpecMLflowLoggerCallback


@functools.cache
def _wandb_class() -> type:
    from ray.air.integrations.wandb import WandbLoggerCallback

    class SpecWandbLoggerCallback(WandbLoggerCallback):
        """Ray's W&B logger with the spec's parameters as the run's config.

        Ray's W&B logger; the run's config is :func:`trial_params` (Ray's passes the spec
        object, which W&B stores as one nested value).
        """

        def setup(self, *args: Any, **kwargs: Any) -> None:
            super().setup(*args, **kwargs)  # type: ignore[no-untyped-call]
            if "dir" in self.kwargs:
                Path(self.kwargs["dir"]).mkdir(parents=True, exist_ok=True)

        def log_trial_start(self, trial: Any) -> None:
            # Ray's log_trial_start lets the callback's wandb.init kwargs (public ``kwargs``)
            # override what it built from trial.config: the flat parameters, for this trial
            kwargs = self.kwargs
            self.kwargs = {**kwargs, "config": trial_params(trial.config)}
            try:
                super().log_trial_start(trial)
            finally:
                self.kwargs = kwargs

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            # Ray's logging actor updates the run's config with each result's "config" (the spec
            # again, nested): the flat parameters instead
            super().log_trial_result(iteration, trial, {**result, "config": trial_params(trial.config)})

    return SpecWandbLoggerCallback


def logger_callbacks(trackers: Iterable[str], *, study_name: str, results_dir: str | None,
                     wandb_project: str | None = None) -> list[Any]:
    """Ray Tune callbacks (for ``tune.RunConfig(callbacks=...)``) that log to ``trackers``.

    ``results_dir``: the study's local folder (``<storage>/<name>``), or None when the study's
    storage is remote; it holds the MLflow store and the W&B runs (see the module's doc).
    """
    callbacks: list[Any] = []
    for name in trackers:
        if name == "tensorboard":
            callbacks.append(_tbx_class()())
        elif name == "mlflow":
            uri = mlflow_tracking_uri(results_dir)
            artifacts = None  # a tracking server has its own artifact store
            if results_dir is not None and not os.environ.get("MLFLOW_TRACKING_URI"):  # the default store
                artifacts = (Path(results_dir).resolve() / MLFLOW_ARTIFACTS).as_uri()
            callbacks.append(_mlflow_class()(tracking_uri=uri, experiment_name=study_name, tags={"study": study_name},
                                             save_artifact=False, artifact_location=artifacts))
        elif name == "wandb":
            kwargs: dict[str, Any] = {}
            folder = wandb_dir(results_dir)
            if folder:
                kwargs["dir"] = str(Path(folder).resolve())
            if os.environ.get("WANDB_MODE"):
                # the logging actor's process may not inherit the driver's environment (a cluster)
                kwargs["mode"] = os.environ["WANDB_MODE"]
            project = wandb_project or os.environ.get("WANDB_PROJECT") or study_name
            callbacks.append(_wandb_class()(project=project, group=study_name, **kwargs))
        else:
            raise UsageError(f"--log: unknown tracker {name!r}; allowed: {', '.join(TRACKERS)}")
    return callbacks
