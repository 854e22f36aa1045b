"""The study's driver: Ray Tune over the trials, Optuna as the searcher, Parquet as the record.

:func:`run_study` takes validated :class:`study.settings.StudySettings`, starts (or joins)
Ray, runs or resumes the Tune experiment, writes the union tables and ``summary.json`` and
prints the summary.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mislas.errors import UsageError
from study import journal, resume
from study.nodecheck import check_nodes, check_stage1_gpus
from study.resume import ResumePlan, journal_spec
from study.runtime import join_cluster
from study.settings import StudySettings, canonical_overrides
from study.storage import LockHeld, StorageError, Store, StudyLock
from study.tune_adapter import cluster_resources

if TYPE_CHECKING:
    from study.callbacks import RecordContext
    from study.stage1_phase import PhaseResult
    from study.trainable import TrialContext

__all__ = ["ResumePlan", "check_study_json", "journal_spec", "run_study"]


def tune_objective(s: StudySettings) -> tuple[str | list[str], str | list[str]]:
    """Return the objectives as Tune's ``Searcher`` spells them.

    The objectives (``s.metric``, ``s.mode``: always tuples) as Tune's ``Searcher`` spells
    them: a string for one objective, a list for several.
    """
    if len(s.metric) == 1:
        return s.metric[0], s.mode[0]
    return list(s.metric), list(s.mode)


def make_searcher(s: StudySettings, journal_file: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from study.search import MislasOptunaSearch, StudySearcher
    from study.settings import table6

    storage = JournalStorage(JournalFileBackend(str(journal_file)))
    searchers, table6s, names = {}, {}, {}
    for i, d in enumerate(s.spaces):
        names[d] = f"{s.name}:{d}"
        # StudySearcher enqueues the Table 6 point as member 0 of each seed's first trial
        searchers[d] = MislasOptunaSearch(space=s.spaces[d], metric=s.metric, mode=s.mode,
                                          sampler_seed=s.sampler_seed + i, study_name=names[d],
                                          storage=storage)
        table6s[d] = table6(d, s.imb_factor)
    metric, mode = tune_objective(s)
    return StudySearcher(searchers=searchers, n_trials={d: s.trials for d in searchers}, seeds=s.seeds,
                         table6=table6s, spaces=s.spaces, fixed=s.fixed_trials(), metric=metric, mode=mode,
                         study_names=names, group_size=s.group_size, confirm_seeds=s.confirm_seeds(),
                         journal_file=str(journal_file))


def make_scheduler(s: StudySettings) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    from study.search import GroupedASHA

    if s.scheduler == "fifo":
        return FIFOScheduler()  # type: ignore[no-untyped-call]
    planned = s.epochs_planned()  # ASHA acts on the first objective
    return GroupedASHA(metric=s.metric[0], mode=s.mode[0], max_t={d: planned[d]["mislas"] for d in s.datasets},
                       grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def trial_name(trial: Any) -> str:
    """Short, stable trial names (Tune's default repeats the whole config in folder names)."""
    return f"{trial.config['spec'].label()}-{trial.trial_id}"


SHA_KEY = "stage1_checkpoint_sha256"


def changed_stage1_line(s: StudySettings, theirs: dict[str, str], mine: dict[str, str]) -> str:
    """The refusal of a resume whose --stage1-checkpoint file is not the one the study started with."""
    d = next(d for d in sorted(mine) if theirs.get(d) != mine[d])
    then = str(theirs.get(d) or "none")[:12]
    return (f"--stage1-checkpoint {s.stage1_checkpoints[d]}: not the file study {s.name} started with for {d} "
            f"(sha256 {mine[d][:12]} now, {then} then); give that file back to resume, or pick a new --name")


def check_study_json(s: StudySettings, results: Store) -> dict[str, Any] | None:
    """The saved study.json, after checking a rerun of that name has the same settings."""
    if not results.exists("study.json"):
        if s.resume:
            raise UsageError(f"--resume: no study named {s.name!r} under {s.storage} (no {results.uri('study.json')})")
        return None
    saved: dict[str, Any] = json.loads(results.read_bytes("study.json"))
    mine = json.loads(json.dumps(s.identity()))
    theirs = dict(saved.get("identity", {}))
    if isinstance(theirs.get("overrides"), list):  # studies saved before the canonical order
        theirs["overrides"] = canonical_overrides([str(o) for o in theirs["overrides"]])
    if SHA_KEY not in theirs:  # a study made before the files' sha256 were recorded: not compared
        mine.pop(SHA_KEY, None)
    diff = sorted(k for k in mine if theirs.get(k) != mine[k])
    if SHA_KEY in diff:
        raise UsageError(changed_stage1_line(s, theirs.get(SHA_KEY) or {}, mine[SHA_KEY]))
    if diff:
        raise UsageError(f"--name {s.name}: a study of that name with other settings exists at {results.uri()} "
                         f"(differs in {', '.join(diff)}); rerun with its settings to resume it, or pick a new --name")
    return saved


def sigterm_as_ctrl_c() -> Any:
    """Handle SIGTERM as Ctrl-C in the main thread; return the previous handler (None elsewhere).

    SIGTERM handled as Ctrl-C (a scheduler's or ``kill``'s stop): during ``Tuner.fit`` Tune's
    SIGINT handler saves the experiment state and returns, so the summary and the rerun hint
    follow (exit 1); elsewhere it raises KeyboardInterrupt (study.run: rc 1 and the hint).
    Installed after ``ray.init``, whose own SIGTERM handler exits mid-call (a C abort, rc 134).
    Returns the previous handler.
    """
    def handler(signum: int, frame: Any) -> None:
        current = signal.getsignal(signal.SIGINT)
        if callable(current) and current is not signal.default_int_handler:
            current(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return None
    return signal.signal(signal.SIGTERM, handler)


def resource_problem(s: StudySettings, cluster: dict[str, float]) -> str | None:
    """Say why no trial or Stage-1 worker could be placed on ``cluster``, or None.

    Why no trial or Stage-1 worker could be placed on ``cluster`` as it is (None: they can):
    more CPUs than it has, or GPUs it does not have.
    """
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if s.cpus_per_trial > cpus:
        return f"--cpus-per-trial {s.cpus_per_trial:g}: the Ray cluster has {cpus:g} CPUs, so no trial could start"
    for option, wanted in (("--gpus-per-trial", s.gpus_per_trial), ("--stage1-gpus-per-worker",
                                                                    s.stage1_gpus_per_worker)):
        if wanted is not None and wanted > gpus:
            has = f"{gpus:g} GPUs" if gpus else "no GPU"
            return f"{option} {wanted:g}: the Ray cluster has {has}, so nothing could start"
    return None


def check_resources(s: StudySettings, cluster: dict[str, float], *, joined: bool = False,
                    poll_s: float = 2.0) -> None:
    """Refuse what the cluster cannot place, or wait for it to grow where asked to.

    Refuse, up front, what the cluster cannot place (Tune would wait forever, warning every
    60 s). The in-process Ray never grows: refused at once. A joined cluster may autoscale, which
    no public Ray API tells: refused at once too, unless ``--wait-for-resources S`` is given;
    then the trial's bundle is requested from the autoscaler (``ray.autoscaler.sdk.request_resources``,
    a no-op on a cluster without one), said in one line, and the cluster's resources are polled
    until they suffice or S seconds have passed (refused then, one line).
    """
    problem = resource_problem(s, cluster)
    if problem is None:
        return
    if not joined:
        raise UsageError(f"{problem}; give at most what it has (--num-cpus / the machine's CPUs and GPUs)")
    if not s.wait_for_resources:
        raise UsageError(f"{problem} now; give at most what it has, or, if its nodes autoscale, add "
                         f"--wait-for-resources SECONDS to wait for them")
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": s.cpus_per_trial, **({"GPU": g} if (g := max(s.gpus_per_trial or 0.0,
                                                                    s.stage1_gpus_per_worker or 0.0)) else {})}
    say(f"{problem} now; requested {bundle} from its autoscaler, waiting up to {s.wait_for_resources:g} s for "
        f"the nodes (--wait-for-resources), Ctrl-C to stop")
    t0 = time.monotonic()
    request_resources(bundles=[bundle])
    try:
        while problem is not None and time.monotonic() - t0 < s.wait_for_resources:
            time.sleep(max(0.0, min(poll_s, s.wait_for_resources - (time.monotonic() - t0))))
            problem = resource_problem(s, cluster_resources())
    finally:
        request_resources(bundles=[])  # (the request is persistent: Tune's own demand takes over)
    if problem is not None:
        raise UsageError(f"{problem} after waiting {s.wait_for_resources:g} s (--wait-for-resources); give at most "
                         f"what it has, or wait longer")
    say(f"the cluster has the resources after {time.monotonic() - t0:.0f} s: {_resource_text(cluster_resources())}")


def _resource_text(cluster: dict[str, float]) -> str:
    return ", ".join(f"{cluster.get(k, 0):g} {k}s" for k in ("CPU", "GPU"))


def say(line: str) -> None:
    print(f"[study] {line}", file=sys.stderr, flush=True)


def run_study(s: StudySettings, *, fingerprints: dict[str, str] | None = None) -> int:
    """Run (or resume) the study under its driver lock; returns the exit status.

    ``fingerprints``: the data sets' fingerprints if the preflight loaded them here (the
    Stage-1 phase then skips cached Stage 1s without starting a worker).
    """
    try:
        storage = Store(s.storage)
    except StorageError as exc:
        raise UsageError(f"--storage: {exc}") from None
    results = storage.child(s.name)
    saved = check_study_json(s, results)
    # a cluster that refuses this driver (token, address) or lacks a trial's packages on a node
    # refuses it before anything is written to the storage (study.runtime.ClusterError,
    # study.nodecheck.NodeDependencyError: one line, exit 3)
    joined_s = join_cluster(s.address)
    if joined_s is not None:
        check_nodes()
    results.makedirs()
    lock = StudyLock(results)
    try:
        lock.acquire()
    except LockHeld as exc:
        raise UsageError(f"--name {s.name}: {exc}") from None
    try:
        if (line := lock.describe_takeover()) is not None:
            say(line)
        return _run_locked(s, storage, results, saved, fingerprints or {}, joined_s)
    finally:
        lock.release()


def stage1_phase(s: StudySettings, storage: Store, results: Store, fingerprints: dict[str, str],
                 stage1_gpus: float) -> PhaseResult:
    """Train the Stage 1s the study needs before any Stage-2 trial starts (study.stage1_phase)."""
    from study.stage1_phase import Stage1Resources, plan, run_phase

    jobs = plan(s, fingerprints)
    resources = Stage1Resources(workers=s.stage1_workers, cpus_per_worker=s.cpus_per_trial,
                                gpus_per_worker=stage1_gpus)
    runs = results.uri("stage1-runs")
    if results.local:
        runs = os.path.abspath(runs)
    return run_phase(jobs, location=storage.uri("stage1"), runs=runs, resources=resources,
                     max_failures=s.max_failures, progress=s.progress, say=say)


@dataclass(frozen=True)
class Placement:
    """Where the trials and Stage-1 workers run, from the cluster Ray joined."""

    gpus: float  # per trial
    device: str  # the trials' torch device
    stage1_gpus: float  # per Stage-1 worker


def place(s: StudySettings, *, joined: bool) -> Placement:
    """The resources each trial and Stage-1 worker asks for; refuses what cannot be had."""
    resources = cluster_resources()
    check_resources(s, resources, joined=joined)
    default_gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    gpus = s.gpus_per_trial if s.gpus_per_trial is not None else default_gpus
    stage1_gpus = s.stage1_gpus_per_worker if s.stage1_gpus_per_worker is not None else default_gpus
    check_stage1_gpus(s.stage1_workers, stage1_gpus)  # one line, exit 3: no NCCL error, no "rerun"
    return Placement(gpus=gpus, device="cuda" if gpus > 0 else "cpu", stage1_gpus=stage1_gpus)


def prepare(s: StudySettings, storage: Store, results: Store, saved: dict[str, Any] | None,
            local_cache: Path) -> ResumePlan:
    """Write study.json and compute the run's :class:`study.resume.ResumePlan` (before Ray starts)."""
    created = saved["created_at"] if saved else datetime.now(timezone.utc).isoformat()
    study_json = {"name": s.name, "identity": s.identity(), "created_at": created,
                  "spaces": {d: sp.source for d, sp in s.spaces.items()}, "storage": storage.uri(),
                  "results": results.uri()}
    results.write_bytes(json.dumps(study_json, indent=2).encode(), "study.json")
    return resume.plan(s, results, local_cache, say)


def contexts(s: StudySettings, storage: Store, results: Store, placement: Placement, plan: ResumePlan,
             local_cache: Path) -> tuple[TrialContext, RecordContext]:
    """What every trial shares, and what the driver's callback records rows with."""
    from study.callbacks import RecordContext
    from study.runtime import git_commit
    from study.trainable import TrialContext, versions

    commit, driver_versions = git_commit(), versions()
    ctx = TrialContext(study=s.name, results_location=results.uri(), stage1_location=storage.uri("stage1"),
                       base_configs={d: replace(c, device=placement.device) for d, c in s.configs.items()},
                       cpus_per_trial=s.cpus_per_trial, git_commit=commit, versions=driver_versions,
                       progress=s.progress, stage1_checkpoints=dict(s.stage1_checkpoints),
                       stage1_sha256=dict(s.stage1_sha256),
                       stage1_workers=s.stage1_workers, written=plan.reports())
    record_ctx = RecordContext(
        study=s.name, results_location=results.uri(), budget=s.budget,
        imb_factors={d: c.data.imb_factor for d, c in s.configs.items()}, epochs_planned=s.epochs_planned(),
        versions=driver_versions, git_commit=commit,
        optuna_local=None if results.local else str(local_cache / journal.JOURNAL),
    )
    return ctx, record_ctx


def build_tuner(s: StudySettings, results: Store, plan: ResumePlan, ctx: TrialContext, record_ctx: RecordContext,
                placement: Placement, local_cache: Path) -> Any:
    """Tune's ``Tuner``: restored as the plan says, or a new experiment with the study's searcher."""
    from ray import tune

    from study.callbacks import ResultsCallback
    from study.tracking import logger_callbacks
    from study.trainable import run_trial

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                    {"cpu": s.cpus_per_trial, "gpu": placement.gpus})
    if plan.restore:
        if s.trackers:
            say("--log on a resumed study: Tune restores the first run's callbacks, so its trackers are kept")
        # Unfinished trials continue from their last checkpoint; finished ones are kept as they
        # are; errored ones stay failed (their rows are written) unless one has no rows
        return tune.Tuner.restore(plan.tune_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=plan.rerun_errored)
    searcher = make_searcher(s, journal.fetch(results, local_cache))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(s),
                                    num_samples=searcher.total, max_concurrent_trials=s.max_concurrent,
                                    # a trial's worker is kept for the next one: no process start and
                                    # torch import per trial (about 5 s on a small CPU)
                                    reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name="tune", storage_path=results.uri(), verbose=1,
            callbacks=[ResultsCallback(record_ctx), *logger_callbacks(
                s.trackers, study_name=s.name, results_dir=str(results.local_path()) if results.local else None)],
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            # two kept: a driver killed between a trial's newest checkpoint and Tune's next
            # state snapshot leaves a snapshot that names the one before, which must still exist
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def finish(s: StudySettings, results: Store, local_cache: Path, grid: Any, record_ctx: RecordContext,
           timings: dict[str, float]) -> int:
    """After ``Tuner.fit``: rows the callback missed, the unions, the journal, summary.json; the status."""
    from study import results as results_mod
    from study.summary import format_summary, summarize

    reconcile(grid, record_ctx)
    results_mod.rebuild_unions(results, say=say)  # once, at the end (the callback writes only parts)
    resume.keep_whole_state(results)
    trials_table = results_mod.read_table(results, "trials.parquet")
    journal.tell_finished(results, local_cache, resume.journal_spec(s), trials_table.to_pylist())
    planned = s.planned_trials()
    if len(results_mod.complete_parts(results)) >= planned:  # only a finished study has orphans
        journal.close_orphans(results, local_cache, [f"{s.name}:{d}" for d in s.spaces])
    journal.upload(results, local_cache)
    summary = summarize(s, trials_table.to_pandas(), results_uri=results.uri(), timings=timings)
    results.write_bytes(json.dumps(summary, indent=2, default=str).encode(), "summary.json")
    print(format_summary(summary), flush=True)
    if summary["trials"]["total"] < planned:  # e.g. Ctrl-C: Tune saved its state and returned
        print(f"[study] {summary['trials']['total']} of {planned} trials ended; rerun the same command "
              f"(or add --resume) to continue", file=sys.stderr)
        return 1
    return 0 if summary["trials"]["finished"] else 1


def no_space(results: Store, where: str | None = None) -> int:
    """The one line of a full disk (exit 1): the rows written stay, a rerun continues."""
    from study import results as results_mod

    rows = len(results_mod.complete_parts(results))
    say(resume.no_space_line(where or results.uri(), rows))
    return 1


def _run_locked(s: StudySettings, storage: Store, results: Store, saved: dict[str, Any] | None,
                fingerprints: dict[str, str], joined_s: float | None = None) -> int:
    try:
        return _run_planned(s, storage, results, saved, fingerprints, joined_s)
    except OSError as exc:
        if not resume.is_no_space(exc):
            raise
        return no_space(results, exc.filename if isinstance(exc.filename, str) else None)


def _run_planned(s: StudySettings, storage: Store, results: Store, saved: dict[str, Any] | None,
                 fingerprints: dict[str, str], joined_s: float | None) -> int:
    import ray

    from study.runtime import init_ray

    t_start = time.perf_counter()
    local_cache = Path(os.path.expanduser("~/.cache/mislas-study")) / s.name
    plan = prepare(s, storage, results, saved, local_cache)
    resume.reset_storage_faults()
    started_ray, ray_init_s = init_ray(s.address, s.num_cpus)
    timings = {"ray_init_s": ray_init_s if joined_s is None else joined_s}
    previous_sigterm = sigterm_as_ctrl_c()
    try:
        placement = place(s, joined=not started_ray)
        phase = stage1_phase(s, storage, results, fingerprints, placement.stage1_gpus)
        if phase.failures:
            say(f"Stage-1 phase: {len(phase.failures)} of {phase.planned} Stage 1s failed (above); no "
                f"Stage-2 trial ran. Rerun the same command to continue: finished Stage 1s are kept and "
                f"interrupted ones resume at their last epoch")
            return 1
        ctx, record_ctx = contexts(s, storage, results, placement, plan, local_cache)
        tuner = build_tuner(s, results, plan, ctx, record_ctx, placement, local_cache)
        t_fit = time.perf_counter()
        try:
            grid = tuner.fit()
        except Exception:  # e.g. Tune reading back the error files a full disk left empty
            if resume.storage_fault() is None:
                raise
        if (where := resume.storage_fault()) is not None:
            return no_space(results, where)
        timings.update(stage1_phase_s=phase.wall_s, stage1_phase_trainings=phase.trained,
                       stage1_phase_train_s=phase.train_s, fit_s=time.perf_counter() - t_fit)
        timings["total_s"] = time.perf_counter() - t_start
        return finish(s, results, local_cache, grid, record_ctx, timings)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if started_ray:
            ray.shutdown()


def reconcile(grid: Any, record_ctx: Any) -> None:
    """Write every ended trial the callback did not (a safety net; normally there is none)."""
    from ray.tune import ExperimentAnalysis

    from study import results as results_mod
    from study.callbacks import ResultsCallback, error_text

    # the Trial objects (ResultGrid's results lack the checkpoint folders' member files): Tune's
    # public ExperimentAnalysis on the experiment the grid holds
    trials = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
    store = Store(record_ctx.results_location)
    callback = ResultsCallback(record_ctx)
    for trial in trials:
        spec = (trial.config or {}).get("spec")
        if spec is None:
            continue
        ids = spec.member_ids(trial.trial_id)
        if trial.status in ("TERMINATED", "ERROR") and not all(results_mod.part_complete(store, i) for i in ids):
            callback.record(trial, error=error_text(trial) if trial.status == "ERROR" else None)
