"""The Stage-1 phase: every Stage 1 the study needs, trained before its Stage-2 trials start.

Why: a trial that trained its Stage 1 (or waited for another trial to) held its share of a GPU
all along, and one trial cannot use more than one GPU, while at paper scale Stage 1 is most of
the compute (ImageNet-LT / iNaturalist ResNet-50, 180-200 epochs; the reference trains it
data-parallel on 4 GPUs). So the driver plans the Stage 1s first -- one per data set x Stage-1
flavour (mixup / plain) x seed that a planned trial uses -- skips those already in the
:mod:`study.stage1_cache`, and trains the rest side by side as Ray's resources allow, each as
its own Ray work with its own resources:

* ``--stage1-workers 1`` (default): a Ray task with one trial's CPUs and GPUs;
* ``--stage1-workers N``: Ray Train's ``TorchTrainer`` over N workers (DDP; NCCL on GPUs, gloo
  on CPUs; ``--stage1-gpus-per-worker``), the recipe's global batch and learning rate kept,
  the epoch and mixup sharded per rank (:func:`mislas.stage1.fit_stage1`).

A Ray task for one worker, not a one-worker TorchTrainer: Ray Train's controller costs about
12 s per run on a quiet 2-core machine (``python -m benchmarks.ray_overheads``, Ray 2.60; more
under load, docs/study.md) and gives one process nothing.

Resume: every Stage 1 checkpoints each epoch into its cache entry (``stage1.partial.pt``,
rank 0; uploaded after each epoch when the storage is an object store), so a killed phase
(driver, node or worker) continues at its last finished epoch on the next run, and a worker
failure is retried (``--max-failures``) from there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mislas.config import RunConfig
from study.settings import StudySettings
from study.stage1_cache import Stage1Cache, stage1_key
from study.storage import stamp


@dataclass(frozen=True)
class Stage1Job:
    """One Stage 1 the study needs: its data set, flavour and seed, and the config that trains it."""

    dataset: str
    mixup: bool
    seed: int
    config: RunConfig  # the data set's base config with this flavour, seed and the device
    key: str | None = None  # known when the driver could load the data (else the worker computes it)

    def label(self) -> str:
        """A short name for progress lines, e.g. ``cifar10_lt-mixup-s0``."""
        return f"{self.dataset}-{'mixup' if self.mixup else 'plain'}-s{self.seed}"


@dataclass(frozen=True)
class Stage1Resources:
    """What each Stage 1 gets: N data-parallel workers, each with these CPUs and GPUs."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass
class PhaseResult:
    """What the phase did in this driver run."""

    planned: int = 0
    cached: int = 0
    trained: int = 0
    train_s: float = 0.0  # summed over the Stage 1s trained here
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)  # one line each


def needed(s: StudySettings) -> list[tuple[str, bool, int]]:
    """(data set, Stage-1 mixup, seed) of every Stage 1 a planned trial uses, in a stable order.

    Searched MiSLAS trials use the mixup Stage 1 of each seed; the fixed trials (baselines,
    ablation) their own flavour. Data sets given ``--stage1-checkpoint`` need none.
    """
    wanted = {(t.dataset, t.mixup, t.seed) for t in s.fixed_trials()}
    if s.trials > 0:
        wanted |= {(d, True, seed) for d in s.spaces for seed in s.seeds}
    return sorted(w for w in wanted if w[0] not in s.stage1_checkpoints)


def plan(s: StudySettings, fingerprints: dict[str, str]) -> list[Stage1Job]:
    """Plan the Stage-1 jobs of a study.

    The jobs (each data set's study config with its flavour and seed), with their cache keys
    (for ``s.stage1_workers``) where the data set's fingerprint is known.
    """
    jobs = []
    for d, mixup, seed in needed(s):
        base = s.configs[d]
        cfg = replace(base, stage1=replace(base.stage1, mixup=mixup), seed=seed)
        key = stage1_key(fingerprints[d], cfg, s.stage1_workers)[0] if d in fingerprints else None
        jobs.append(Stage1Job(d, mixup, seed, cfg, key))
    return jobs


def train_job(job: Stage1Job, location: str, progress: bool, device_name: str) -> dict[str, Any]:
    """Train one Stage 1 into the cache, or find it there; every data-parallel rank runs this.

    Rank 0 holds the entry's lock and decides (cache hit or train), the other ranks follow its
    broadcast decision and train beside it; rank 0 writes the checkpoints and publishes.
    """
    import torch

    from mislas.distributed import broadcast, current_shard
    from mislas.stage1 import evaluate_stage1, fit_stage1
    from mislas.train import load_data

    shard = current_shard()
    device = torch.device(device_name)
    cfg = replace(job.config, device=device.type)
    data = load_data(cfg)
    key, inputs = stage1_key(data.fingerprint, cfg, shard.world)
    if job.key is not None and key != job.key:
        raise RuntimeError(f"Stage 1 {job.label()}: this worker's data gives cache key {key}, the driver's "
                           f"{job.key}: the driver and the workers see different data")
    if shard.rank != 0:
        if broadcast(None) == "train":
            fit_stage1(data, cfg, device=device, progress=False)
        return {}
    cache = Stage1Cache(location)

    def train(folder: Path) -> dict[str, Any]:
        broadcast("train")
        cache.pull_partial(key, folder)
        model, records = fit_stage1(data, cfg, device=device, checkpoint_dir=folder, progress=progress,
                                    on_epoch=lambda _record: cache.push_partial(key, folder))
        res = evaluate_stage1(model, data, cfg, device, records)
        return {"val": res.val.summary(), "test": res.test.summary()}

    entry = cache.get_or_train(key, inputs, train, workers=shard.world)
    if not entry.trained:
        broadcast("skip")
    return {"key": key, "trained": entry.trained, "train_s": entry.train_s,
            "val_acc": entry.metrics.get("val", {}).get("acc")}


def _task_body(job: Stage1Job, location: str, progress: bool, threads: int, gpus: float) -> dict[str, Any]:
    """A one-worker Stage 1 inside a Ray task."""
    import torch

    from study.nodecheck import require_cuda

    torch.set_num_threads(max(1, threads))
    if gpus > 0:
        require_cuda("a Stage-1 task", "--stage1-gpus-per-worker 0")
    return train_job(job, location, progress, "cuda" if gpus > 0 else "cpu")


def _train_loop(config: dict[str, Any]) -> None:
    """The per-worker function of Ray Train's TorchTrainer (the process group is set up).

    Rank 0 reports its outcome with a (tiny) checkpoint: Ray Train keeps a run's metrics only
    with a checkpoint.
    """
    import tempfile

    import ray.train
    import ray.train.torch
    import torch

    torch.set_num_threads(max(1, config["threads"]))
    device = ray.train.torch.get_device()
    out = train_job(config["job"], config["location"], config["progress"], str(device))
    metrics = {"trained": int(bool(out.get("trained"))), "train_s": float(out.get("train_s") or 0.0)}
    with tempfile.TemporaryDirectory() as folder:
        if ray.train.get_context().get_world_rank() == 0:
            Path(folder, "outcome.json").write_text(json.dumps(out, default=str))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)


def _trainer_body(job: Stage1Job, location: str, progress: bool, res: Stage1Resources, max_failures: int,
                  runs: str) -> dict[str, Any]:
    """An N-worker Stage 1: a TorchTrainer run, started from a Ray task so that several run at once."""
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"job": job, "location": location, "progress": progress,
                           "threads": int(res.cpus_per_worker)},
        scaling_config=ray.train.ScalingConfig(num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        # a fresh name per attempt: Ray Train would otherwise restore a finished run of that
        # name instead of training a Stage 1 whose cache entry was set aside since
        run_config=ray.train.RunConfig(name=f"{job.label()}-{stamp()}", storage_path=runs,
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    return {"trained": bool(metrics.get("trained")), "train_s": float(metrics.get("train_s", 0.0))}


def run_phase(jobs: Sequence[Stage1Job], *, location: str, runs: str, resources: Stage1Resources,
              max_failures: int, progress: bool, say: Callable[[str], None]) -> PhaseResult:
    """Train the missing Stage-1 jobs, all submitted at once.

    Train the jobs whose cache entry is missing, all submitted at once (Ray queues them by
    resources); one line per Stage 1 as it ends. Failures are returned, not raised.
    """
    import ray

    t0 = time.perf_counter()
    cache = Stage1Cache(location)
    out = PhaseResult(planned=len(jobs))
    todo = [j for j in jobs if j.key is None or not cache.is_reusable(j.key)]
    out.cached = len(jobs) - len(todo)
    if not todo:
        if jobs:
            say(f"Stage-1 phase: all {len(jobs)} Stage 1s are in the cache ({cache.store.uri()})")
        return out
    how = (f"{resources.workers} data-parallel workers each (Ray Train)" if resources.workers > 1
           else "one worker each (Ray tasks)")
    say(f"Stage-1 phase: training {len(todo)} of {len(jobs)} Stage 1s ({out.cached} in the cache), {how}, "
        f"{resources.cpus_per_worker:g} CPU / {resources.gpus_per_worker:g} GPU per worker")
    pending: dict[Any, Stage1Job] = {}
    for job in todo:
        if resources.workers == 1:
            one = ray.remote(_task_body).options(
                num_cpus=resources.cpus_per_worker, num_gpus=resources.gpus_per_worker,
                max_retries=max_failures, name=f"stage1:{job.label()}")
            ref = one.remote(job, location, progress, int(resources.cpus_per_worker), resources.gpus_per_worker)
        else:  # the TorchTrainer's driver takes no resources of its own; its workers do
            many = ray.remote(_trainer_body).options(num_cpus=0, max_retries=0, name=f"stage1:{job.label()}")
            ref = many.remote(job, location, progress, resources, max_failures, runs)
        pending[ref] = job
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            done = ray.get(ready[0])
        except Exception as exc:  # the task's own error, wrapped by Ray: keep its last line
            last = [line for line in str(exc).strip().splitlines() if line.strip()]
            out.failures.append(f"Stage 1 {job.label()} failed: {last[-1] if last else type(exc).__name__}")
            say(out.failures[-1])
            continue
        if done.get("trained"):
            out.trained += 1
            out.train_s += float(done.get("train_s") or 0.0)
            say(f"Stage 1 {job.label()} trained in {float(done.get('train_s') or 0.0):.1f} s "
                f"({len(pending)} still training)")
        else:
            say(f"Stage 1 {job.label()} found in the cache")
    out.wall_s = time.perf_counter() - t0
    return out
