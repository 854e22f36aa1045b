"""One Tune trial of the study: Stage 1 from the shared cache, then Stage 2 for its 1..G members.

Tune calls :func:`run_trial` with ``{"spec": TrialSpec}`` and the study's
:class:`TrialContext` (``tune.with_parameters``). A single trial is a group of one: every
trial takes the same path. What it reports to Tune:

* after each Stage-2 epoch but the last: ``epoch``, ``final = 0``, each member's validation
  metrics under ``g<k>_`` and the group's best ``val_acc`` / ``val_ece`` (what ASHA acts on;
  for a group of one, the member's own), with a checkpoint holding each member's folder
  ``g<k>/`` (``outcome.json``, ``epochs.parquet``) and a pointer to the Stage-2 engine's
  resumable state, which stays in the study's store (:mod:`study.engine_state`: written once
  per epoch, not copied by Tune), so a retried trial (``FailureConfig``) resumes at its last
  finished epoch;
* once at the end: the same with test metrics and ``final = 1``, each ``g<k>/`` now holding
  the member's final outcome and its epochs, classes and reliability tables.

The driver's :class:`study.callbacks.ResultsCallback` turns ``g<k>/`` into the member's
Parquet part. The trial never selects anything on the test split.
"""

from __future__ import annotations

import json
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from mislas.atomic import write_atomic
from mislas.config import TRAINED_METHODS, RunConfig, effective_shift_bn
from mislas.data import LTData
from mislas.device import resolve_device
from mislas.errors import NonFiniteError
from mislas.records import EpochRecord, StageResult
from mislas.reference import load_any_stage1
from mislas.spec import device_name
from mislas.splits import class_splits
from mislas.stage1 import load_stage1, train_stage1
from mislas.stage2 import train_stage2, train_subgroups
from mislas.train import load_data
from study import results, schema
from study.engine_state import EngineState
from study.groups import group_metrics
from study.nodecheck import require_cuda
from study.outcome import OUTCOME, MemberOutcome, divergence
from study.records import TrialSpec
from study.stage1_cache import Stage1Cache, Stage1Entry, stage1_key
from study.tune_adapter import node_ip

REPORT = "report.json"  # the final report, re-reported when a finished trial is restored


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares; built once by the driver, picklable."""

    study: str
    results_location: str  # <storage>/<name>
    stage1_location: str  # <storage>/stage1
    base_configs: dict[str, RunConfig]  # per data set: preset + study shrink + --set + data root + device
    cpus_per_trial: float = 1.0
    git_commit: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    progress: bool = False
    stage1_checkpoints: dict[str, str] = field(default_factory=dict)  # data set -> a given Stage 1
    stage1_sha256: dict[str, str] = field(default_factory=dict)  # data set -> that file's sha256 (its key)
    stage1_workers: int = 1  # data-parallel processes of each Stage 1 (the phase trains them; part of the key)
    # row id -> what a trial whose rows are written reports back (study.resume.ResumePlan.reports)
    written: dict[str, dict[str, Any]] = field(default_factory=dict)


def planned_epochs(cfg: RunConfig) -> int:
    """Return the Stage-2 epochs of the config's method (0 for the methods that do not train)."""
    return int(cfg.stage2.epochs) if cfg.stage2.method in TRAINED_METHODS else 0


def given_stage1_key(path: str, sha256: str | None) -> str:
    """The ``stage1_key`` of rows trained on a given Stage-1 file: its content's hash, then its path.

    Two files behind one path (another backbone copied over it) give rows of different keys.

    >>> given_stage1_key("/ckpt/s1.pt", "ab" * 32)
    'given:abababababababab:/ckpt/s1.pt'
    """
    return f"given:{sha256[:16]}:{path}" if sha256 else f"given:{path}"


def trial_device(wanted: str) -> torch.device:
    """Return the device the trial's config names, refusing CUDA that torch cannot see.

    The device the trial runs on: the one its config names. A trial given a GPU (``device``
    "cuda", from ``--gpus-per-trial`` > 0) whose torch cannot see CUDA fails with one line
    instead of training on the CPU under a config that says "cuda".
    """
    if wanted.startswith("cuda"):  # (the config's device rule allows cuda and cuda:N)
        require_cuda("this trial", "--gpus-per-trial 0 (CPU)")
    return resolve_device(wanted)  # mislas's one device rule (auto, cpu, cuda[:N], mps)


def node_facts() -> dict[str, str | None]:
    """The Ray node this process runs on (None outside Ray)."""
    import ray

    if not ray.is_initialized():
        return {"node_id": None, "node_ip": None}
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": node_ip()}


def versions() -> dict[str, str]:
    """The versions a row records (the driver's, as a fallback for a trial that left none)."""
    import optuna
    import ray

    import mislas

    return {"mislas_version": mislas.__version__, "torch_version": torch.__version__, "ray_version": ray.__version__,
            "optuna_version": optuna.__version__, "python_version": platform.python_version()}


def _val_metrics(val: dict[str, Any]) -> dict[str, Any]:
    return {f"val_{m}": (float("nan") if val.get(m) is None else val[m]) for m in schema.METRICS}


def _test_metrics(test: dict[str, Any]) -> dict[str, Any]:
    return {f"test_{m}": (float("nan") if test.get(m) is None else test[m]) for m in schema.METRICS}


def stored_report(written: Mapping[str, Mapping[str, Any]], ids: Sequence[str]) -> dict[str, Any]:
    """Build the report of a trial whose rows are already written.

    The report of a trial whose rows are already written, from what the driver's resume
    plan told it (study.resume.ResumePlan.reports): the trial does not read the parts.
    """
    members = [{k: v for k, v in written[mid].items() if k not in ("epochs_run", "complete")} for mid in ids]
    final = all(written[mid]["complete"] for mid in ids)
    epoch = min(int(written[mid]["epochs_run"]) for mid in ids)
    return group_metrics(epoch=epoch, final=final, members=members) | {"from_part": 1}


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable (wrapped with ``tune.with_parameters(run_trial, ctx=...)``)."""
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    spec: TrialSpec = config["spec"]
    trial_id = tune.get_context().get_trial_id()
    ids = spec.member_ids(trial_id)
    # A trial whose rows were written before a driver crash is not run again: the resume plan
    # told it its rows, which it reports back (the experiment state may predate its completion).
    if ids and all(i in ctx.written for i in ids):
        print(f"[trial {trial_id}] rows already written: reporting them back, not training again",
              file=sys.stderr, flush=True)
        tune.report(stored_report(ctx.written, ids))
        return
    work = Path(tempfile.mkdtemp(prefix=f"mislas-trial-{trial_id}-"))  # the folder each report hands to Tune
    scratch = Path(tempfile.mkdtemp(prefix=f"mislas-engine-{trial_id}-"))  # the engine's, on an object store
    try:
        _TrialRun(ctx, spec, trial_id, work, EngineState(ctx.results_location, trial_id, scratch)).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


class _TrialRun:
    """The one path of a trial: restore, data, Stage 1, Stage 2 (1..G members), outcomes, reports."""

    def __init__(self, ctx: TrialContext, spec: TrialSpec, trial_id: str, work: Path, engine: EngineState) -> None:
        self.ctx, self.spec, self.trial_id, self.work, self.engine = ctx, spec, trial_id, work, engine
        self.ids = spec.member_ids(trial_id)
        self.cfgs = [spec.run_config(ctx.base_configs[spec.dataset], k) for k in range(len(spec.members))]
        self.planned = planned_epochs(self.cfgs[0])
        self.folders = [work / f"g{k}" for k in range(len(self.ids))]

    # -- files of the checkpoint ---------------------------------------------------------
    def _write_outcome(self, k: int, outcome: MemberOutcome) -> None:
        write_atomic(self.folders[k] / OUTCOME, outcome.to_json())

    def _read_outcome(self, k: int) -> MemberOutcome | None:
        path = self.folders[k] / OUTCOME
        return MemberOutcome.from_json(path.read_bytes()) if path.exists() else None

    def _write_tables(self, k: int, tables: dict[str, Any]) -> None:
        for name, tbl in tables.items():
            results.write_table_local(tbl, self.folders[k] / f"{name}.parquet")

    def _report(self, metrics: dict[str, Any]) -> None:
        """Report ``metrics`` to Tune with the work folder as the checkpoint.

        ``metrics`` with the work folder as the checkpoint: the members' files and the engine's pointer
        (:mod:`study.engine_state`), kilobytes; the Stage-2 state itself stays in the study's store.
        """
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(self.work)))

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retry (FailureConfig) or a resumed study: continue from it
            with checkpoint.as_directory() as folder:
                shutil.copytree(folder, self.work, dirs_exist_ok=True)
            if (self.work / REPORT).exists():
                self._report(json.loads((self.work / REPORT).read_text()))
                return
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
        ref = self.cfgs[0]
        data = load_data(ref)
        device = trial_device(ref.device)
        model, key, entry, stage1_s = self._stage1(ref, data, device)
        outcomes = [self._start_outcome(k, data, device, key, entry, stage1_s) for k in range(len(self.ids))]
        for k, o in enumerate(outcomes):
            self._write_outcome(k, o)

        records: list[list[dict[str, Any]]] = [self._earlier_epochs(k) for k in range(len(self.ids))]
        t_s2 = time.perf_counter() - max((r[-1]["wall_s"] for r in records if r), default=0.0)
        try:
            res = self._stage2(data, model, device, records, outcomes, t_s2)
        except NonFiniteError as exc:
            # A setting whose training diverged fails the same way on every retry: the trial
            # ends with a "diverged" result instead of raising, so FailureConfig does not rerun
            # it; the driver records it as failed and Optuna as FAIL.
            self._diverged(outcomes, records, time.perf_counter() - t_s2, exc)
            return
        self._finish(data, res, outcomes, time.perf_counter() - t_s2)

    def _stage1(self, cfg: RunConfig, data: LTData, device: torch.device) -> tuple[Any, str, Stage1Entry, float]:
        """Load the trial's Stage 1: the given checkpoint or the shared cache's entry.

        Stage 1 from the shared cache, where the driver's Stage-1 phase (study.stage1_phase)
        put it before the trials started. Should the entry be gone (e.g. set aside as damaged
        since), a single-process Stage 1 is trained here under the entry's lock (others wait
        and reuse it); a data-parallel one only the phase trains, so the trial fails naming it.

        With ``--stage1-checkpoint`` the given file (ours or the reference's) is the Stage 1 of
        every trial of its data set: nothing is trained.
        """
        given = self.ctx.stage1_checkpoints.get(cfg.data.dataset)
        if given is not None:
            t0 = time.perf_counter()
            model = load_any_stage1(Path(given), data, cfg, device)
            key = given_stage1_key(given, self.ctx.stage1_sha256.get(cfg.data.dataset))
            entry = Stage1Entry(key, Path(given), {}, False, 0.0, 0.0, workers=None)
            return model, entry.key, entry, time.perf_counter() - t0
        cache = Stage1Cache(self.ctx.stage1_location)
        key, inputs = stage1_key(data.fingerprint, cfg, self.ctx.stage1_workers)
        if self.ctx.stage1_workers > 1 and not cache.is_done(key):
            raise RuntimeError(f"Stage 1 {key} ({self.ctx.stage1_workers} workers) is not in the cache at "
                               f"{cache.store.uri(key)}: the study's Stage-1 phase trains it; rerun the study")

        def train(folder: Path) -> dict[str, Any]:
            res = train_stage1(data, cfg, device=device, checkpoint_dir=folder, progress=self.ctx.progress)
            return {"val": res.val.summary(), "test": res.test.summary()}

        t0 = time.perf_counter()
        entry = cache.get_or_train(key, inputs, train)
        stage1_s = time.perf_counter() - t0
        return load_stage1(entry.checkpoint, data, cfg, device), key, entry, stage1_s

    def _start_outcome(self, k: int, data: LTData, device: torch.device, key: str, entry: Stage1Entry,
                       stage1_s: float) -> MemberOutcome:
        """Member k's outcome before Stage 2; a retry keeps the first attempt's start and Stage-1 facts.

        The group got Stage 1 once: its training / waiting time is on member 0's row.
        """
        cfg = self.cfgs[k]
        earlier = self._read_outcome(k)
        node = node_facts()
        outcome = MemberOutcome(
            trial_id=self.ids[k], started_at=datetime.now(timezone.utc).isoformat(), epochs_planned=self.planned,
            hostname=socket.gethostname(), node_id=node["node_id"], node_ip=node["node_ip"], device_name=device_name(device), arch=cfg.stage1.arch,
            data_fingerprint=data.fingerprint, config_json=json.dumps(cfg.to_dict(), sort_keys=True),
            stage1_key=key, stage1_metrics=dict(entry.metrics), stage1_trained=entry.trained and k == 0,
            stage1_s=stage1_s if k == 0 else 0.0, stage1_workers=entry.workers, git_commit=self.ctx.git_commit, versions=versions(),
            shift_bn=effective_shift_bn(cfg),
        )
        if earlier is not None:
            outcome = replace(outcome, started_at=earlier.started_at, stage1_s=earlier.stage1_s,
                              stage1_trained=earlier.stage1_trained or outcome.stage1_trained)
        return outcome

    def _earlier_epochs(self, k: int) -> list[dict[str, Any]]:
        path = self.folders[k] / "epochs.json"
        return json.loads(path.read_text()) if path.exists() else []

    def _stage2(self, data: LTData, model: Any, device: torch.device, records: list[list[dict[str, Any]]],
                outcomes: list[MemberOutcome], t_s2: float) -> list[StageResult]:
        if self.spec.method not in TRAINED_METHODS:  # ce, tau_norm: nothing trains in Stage 2
            return [train_stage2(data, model, self.cfgs[0], device=device, progress=self.ctx.progress)]

        reported = [min(len(r) for r in records)]  # a resumed trial reported its earlier epochs

        def on_epoch(k: int, record: EpochRecord) -> None:
            """Record member ``k``'s epoch, and report the epoch once the last member finishes it.

            Report (and checkpoint) epoch e once, when the last member finishes it: members of
            one sub-group arrive one after the other, sub-groups run one after the other.
            """
            records[k].append(asdict(record))
            epoch = min(len(r) for r in records)
            if epoch >= self.planned or epoch <= reported[0]:
                return  # the final report follows with the test metrics; or other members lag behind
            reported[0] = epoch
            for j, recs in enumerate(records):
                write_atomic(self.folders[j] / "epochs.json", json.dumps(recs).encode())
                self._write_tables(j, {"epochs": results.table("epochs", results.epochs_rows(self.ids[j], recs))})
                self._write_outcome(j, replace(outcomes[j], epochs_run=len(recs), val=dict(recs[-1]["val"]),
                                               wall_s=time.perf_counter() - t_s2))
            members = [_val_metrics(r[epoch - 1]["val"]) for r in records]  # (an earlier sub-group is ahead)
            self.engine.publish(epoch, self.work)  # the state the engine wrote, moved into the store
            self._report(group_metrics(epoch=epoch, final=False, members=members))
            self.engine.prune()  # only once Tune holds this report: the one before may still be restored

        self.engine.start(self.work)  # the restored checkpoint's state (or none) in a fresh work folder
        return train_subgroups(data, model, self.cfgs, device=device, checkpoint_dir=self.engine.work,
                               on_epoch=on_epoch, progress=self.ctx.progress)

    def _diverged(self, outcomes: list[MemberOutcome], records: list[list[dict[str, Any]]], wall: float,
                  exc: NonFiniteError) -> None:
        """Every member ends as failed with its epochs so far (they share one loop)."""
        finished = datetime.now(timezone.utc).isoformat()
        where = f" in a group of {len(self.ids)}" if self.spec.grouped else ""
        members = []
        for k, recs in enumerate(records):
            error = f"diverged (non-finite values{where}) after {len(recs)} of {self.planned} epochs: {exc}"
            self._write_outcome(k, replace(outcomes[k], epochs_run=len(recs), stage2_s=wall / len(self.ids),
                                           wall_s=wall, finished_at=finished, error=error[:2000], diverged=True))
            self._write_tables(k, {"epochs": results.table("epochs", results.epochs_rows(self.ids[k], recs))})
            members.append(_val_metrics({}) | {"diverged": 1})
        self.engine.finish(self.work)
        report = group_metrics(epoch=min(len(r) for r in records), final=False, members=members) | {"diverged": 1}
        write_atomic(self.work / REPORT, json.dumps(report).encode())
        print(f"[trial {self.trial_id}] diverged: {exc}", file=sys.stderr, flush=True)
        self._report(report)

    def _finish(self, data: LTData, res: list[StageResult], outcomes: list[MemberOutcome], stage2_s: float) -> None:
        finished = datetime.now(timezone.utc).isoformat()
        members = []
        for k, (cfg, r) in enumerate(zip(self.cfgs, res)):
            member = self.spec.members[k]
            keep = self.spec.optuna_study is None or member.is_paper_setting  # fixed rows and Table 6
            self._write_tables(k, final_tables(self.ids[k], data, cfg, r, keep_predictions=keep))
            why = divergence(len(data.class_counts), nll={"val": r.val.summary().get("nll"),
                                                          "test": r.test.summary().get("nll")},
                             train_losses=[e.train_loss for e in r.epochs])
            # stage2_s is the member's share of the group's Stage 2; wall_s the group's elapsed time
            self._write_outcome(k, replace(
                outcomes[k], diverged=why is not None, error=None if why is None else f"diverged: {why}",
                epochs_run=len(r.epochs), final=True, val=r.val.summary(), test=r.test.summary(),
                tau=r.extras.get("tau"), temperature=r.temperature,
                val_ts=r.val_ts.summary() if r.val_ts is not None else {},
                test_ts=r.test_ts.summary() if r.test_ts is not None else {},
                stage2_s=stage2_s / len(self.ids), wall_s=stage2_s, finished_at=finished))
            (self.folders[k] / "epochs.json").unlink(missing_ok=True)
            members.append(_val_metrics(r.val.summary()) | _test_metrics(r.test.summary())
                           | {"diverged": int(why is not None)})
            print(f"[trial {self.ids[k]}] {cfg.data.dataset} {cfg.stage2.method} seed {cfg.seed}"
                  f"{f' (group of {len(self.ids)})' if self.spec.grouped else ''}: val acc {r.val.acc:.2f} "
                  f"ECE {r.val.ece:.2f}" + ("" if why is None else f" (diverged: {why})"), file=sys.stderr, flush=True)
        self.engine.finish(self.work)  # the finished trial needs only its rows
        report = group_metrics(epoch=self.planned, final=True, members=members)
        write_atomic(self.work / REPORT, json.dumps(report).encode())
        self._report(report)


def final_tables(trial_id: str, data: LTData, cfg: RunConfig, res: StageResult, *,
                 keep_predictions: bool = False) -> dict[str, Any]:
    """Build a finished member's result tables from its StageResult.

    A finished member's epochs, classes, reliability, confidence and (``keep_predictions``:
    per test image) predictions tables (from its StageResult).
    """
    splits = class_splits(data.class_counts, cfg.eval.split_rule)
    epsilon = res.extras.get("epsilon")
    return {
        "epochs": results.table("epochs", results.epochs_rows(trial_id, res.epochs)),
        "classes": results.table("classes", results.classes_rows(
            trial_id, data.class_counts, splits, res.test.per_class_acc, res.val.per_class_acc, res.weight_norms,
            None if epsilon is None else np.asarray(epsilon))),
        "reliability": results.table("reliability", results.reliability_rows(
            trial_id, {"val": res.val.reliability, "test": res.test.reliability})),
        "confidence": results.table("confidence", results.confidence_rows(
            trial_id, {"val": res.val.confidence_quantiles, "test": res.test.confidence_quantiles})),
        "predictions": results.predictions_table(trial_id, "test", res.test.samples if keep_predictions else None),
    }
