"""Stage 1: the whole network trained with cross-entropy on mixup pairs, instance-balanced.

One process, or one rank of a data-parallel run (:func:`fit_stage1`); resumable after each
epoch from ``stage1.partial.pt``, reusable once finished from ``stage1.pt``
(:mod:`mislas.checkpoint` writes and checks both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mislas import checkpoint
from mislas.config import RunConfig
from mislas.data.batches import Batches, train_batches
from mislas.data.loaders import Shard
from mislas.data.types import LTData
from mislas.distributed import broadcast, current_shard, data_parallel, weighted_means
from mislas.errors import UsageError
from mislas.evaluation import finish
from mislas.loop import check_finite, run_epoch
from mislas.mixup import Mixup
from mislas.models import Network, build_model
from mislas.progress import log
from mislas.records import EpochRecord, OnEpoch, StageResult, epoch_records
from mislas.schedules import stage1_lr_factor
from mislas.seeding import epoch_seed

__all__ = ["evaluate_stage1", "fit_stage1", "load_stage1", "new_model", "train_stage1"]


def new_model(data: LTData, cfg: RunConfig, device: torch.device, *, load_pretrained: bool = True) -> Network:
    """The Stage-1 network of ``cfg`` for ``data`` on ``device`` (channels-last when the config says so)."""
    model = build_model(cfg.stage1.arch, data.num_classes, data.in_channels, cfg.stage1.pretrained,
                        load_pretrained=load_pretrained).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def load_stage1(path: Path, data: LTData, cfg: RunConfig, device: torch.device) -> Network:
    """A finished Stage-1 model, after checking it was made on this data with this recipe."""
    payload = checkpoint.load_stage1(path, fingerprint=data.fingerprint, stage1=cfg.stage1)
    model = new_model(data, cfg, device, load_pretrained=False)
    model.load_state_dict(payload["model"])
    return model


def train_stage1(
    data: LTData,
    cfg: RunConfig,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    on_epoch: OnEpoch | None = None,
    progress: bool = True,
) -> StageResult:
    """Run Stage 1 and return its evaluated result.

    Train (or resume, or reuse) Stage 1 in this process and evaluate it;
    ``checkpoint_dir/stage1.pt`` when finished.
    """
    final = Path(checkpoint_dir) / checkpoint.STAGE1 if checkpoint_dir else None
    if final is not None and final.exists():
        log(progress, f"[stage1] reusing {final}")
        model = load_stage1(final, data, cfg, device)
        return finish(model, data, cfg, device, [], {"reused": str(final)})
    model, records = fit_stage1(data, cfg, device=device, checkpoint_dir=checkpoint_dir, on_epoch=on_epoch,
                                progress=progress)
    return evaluate_stage1(model, data, cfg, device, records)


def evaluate_stage1(model: Network, data: LTData, cfg: RunConfig, device: torch.device,
                    records: list[EpochRecord]) -> StageResult:
    """A trained Stage-1 model's result: val/test evaluation, temperature scaling, weight norms."""
    return finish(model, data, cfg, device, records)


@dataclass
class _Stage1Run:
    """What :func:`fit_stage1`'s epochs share: the model, its optimizer and schedule, the data, the files."""

    data: LTData
    cfg: RunConfig
    device: torch.device
    shard: Shard
    model: Network
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    parallel: nn.Module | None
    generator: torch.Generator
    batches: Batches
    partial: Path | None
    records: list[EpochRecord]
    start: int


def _start(data: LTData, cfg: RunConfig, device: torch.device, checkpoint_dir: Path | None) -> _Stage1Run:
    """The seeded initial model, its SGD and schedule, resumed from the partial checkpoint when there is one."""
    s1 = cfg.stage1
    shard = current_shard()
    if s1.batch_size % shard.world:
        raise UsageError(f"stage1.batch_size={s1.batch_size} must be a multiple of the {shard.world} data-parallel "
                         f"workers (the global batch is split evenly over them)")
    main = shard.rank == 0
    partial = Path(checkpoint_dir) / checkpoint.STAGE1_PARTIAL if checkpoint_dir and main else None
    torch.manual_seed(epoch_seed(cfg.seed, 1, 0))  # the initial weights are part of the run's seed
    model = new_model(data, cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=s1.lr, momentum=s1.momentum, weight_decay=s1.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: stage1_lr_factor(s1, step + 1))
    records: list[EpochRecord] = []
    start = 1
    state = broadcast(checkpoint.load_stage1_partial(partial, fingerprint=data.fingerprint, stage1=s1))
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        records = epoch_records(state["records"])
        start = state["epoch"] + 1
        log(main, f"[stage1] resuming after epoch {state['epoch']} from {state['path']}")  # always said
    parallel = data_parallel(model, device) if shard.world > 1 else None
    generator = torch.Generator()
    batches = train_batches(data, cfg, sampler="instance", batch_size=s1.batch_size // shard.world,
                            generator=generator, device=device, shard=shard)
    return _Stage1Run(data, cfg, device, shard, model, optimizer, scheduler, parallel, generator, batches, partial,
                      records, start)


def _epoch(run: _Stage1Run, epoch: int, t0: float) -> EpochRecord:
    """One reseeded epoch of Stage 1 (the loss averaged over all ranks), checked finite, the schedule stepped."""
    cfg, s1, shard = run.cfg, run.cfg.stage1, run.shard
    seed = epoch_seed(cfg.seed, 1, epoch)
    run.generator.manual_seed(seed)
    torch.manual_seed(seed)
    lr = run.optimizer.param_groups[0]["lr"]
    stats = run_epoch(
        run.model, run.batches, loss_fn=nn.functional.cross_entropy, optimizer=run.optimizer, device=run.device,
        train_backbone=True, backbone_bn_train=True,
        mixup=Mixup(s1.mixup_alpha, seed, stream=shard.rank) if s1.mixup else None,
        channels_last=cfg.channels_last, parallel=run.parallel,
    )
    loss = stats.loss
    if shard.world > 1:  # the loss over all ranks' samples
        loss = weighted_means([stats.loss * stats.samples], stats.samples, run.device)[0][0]
    check_finite(1, epoch, [loss], [[]])
    run.scheduler.step()
    return EpochRecord(stage=1, epoch=epoch, lr=lr, classifier_lr=lr, train_loss=loss, val={},
                       wall_s=time.perf_counter() - t0, steps=stats.steps)


def fit_stage1(
    data: LTData,
    cfg: RunConfig,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    on_epoch: OnEpoch | None = None,
    progress: bool = True,
) -> tuple[Network, list[EpochRecord]]:
    """Run Stage 1's training loop and return the model and its epoch records.

    Stage 1's training loop (resumed from ``checkpoint_dir/stage1.partial.pt`` if there);
    writes ``checkpoint_dir/stage1.pt`` at the end. No evaluation (:func:`train_stage1` adds it).

    Inside a ``torch.distributed`` process group each process is one rank of a data-parallel
    run, as the reference's train_stage1.py (main_worker) trains: the global batch of the
    recipe (Table 6) is split over the ranks (``batch_size / world`` each; the learning rate is
    the recipe's, since the global batch is), each rank trains on its shard of the epoch's
    global shuffle (:class:`mislas.data.loaders.Shard`) with its own mixup draws, DDP averages
    the gradients, BN keeps per-rank batch statistics. Rank 0 alone reads and writes the
    checkpoints (its resume state is broadcast) and logs; every rank returns the same model.
    """
    run = _start(data, cfg, device, checkpoint_dir)
    main = run.shard.rank == 0
    records = run.records
    t0 = time.perf_counter() - (records[-1].wall_s if records else 0.0)
    for epoch in range(run.start, cfg.stage1.epochs + 1):
        record = _epoch(run, epoch, t0)
        records.append(record)
        workers = f", {run.shard.world} workers" if run.shard.world > 1 else ""
        log(progress and main, f"[stage1] epoch {epoch}/{cfg.stage1.epochs} lr {record.lr:.4g} loss "
                               f"{record.train_loss:.4f} ({record.steps} steps{workers}, {record.wall_s:.1f} s)")
        if run.partial is not None:
            checkpoint.save_stage1_partial(run.partial, epoch=epoch, model=run.model, optimizer=run.optimizer,
                                           scheduler=run.scheduler, records=records, cfg=cfg,
                                           fingerprint=data.fingerprint)
        if on_epoch is not None:
            on_epoch(record)
    if checkpoint_dir and main:
        checkpoint.save_stage1(Path(checkpoint_dir) / checkpoint.STAGE1, model=run.model, records=records, cfg=cfg,
                               fingerprint=data.fingerprint)
        if run.partial is not None:
            run.partial.unlink(missing_ok=True)
    return run.model, records
