"""The one Stage-2 engine: G configs ("members") trained on one frozen-backbone pass per batch.

Members that can share the pass (:func:`mislas.stage2.groups.check_group`) train together,
each with its own head, loss, optimizer and schedule (:func:`mislas.stage2.members.new_member`),
evaluated by one pass per eval batch (:func:`mislas.evaluation.evaluate_heads`) and
checkpointed per epoch with every member's state (:func:`mislas.checkpoint.save_stage2`).
Members that cannot share it train as sub-groups, one after the other (:func:`train_subgroups`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mislas import checkpoint
from mislas import device as dev
from mislas.config import RunConfig, effective_shift_bn
from mislas.data.batches import Batches, train_batches
from mislas.data.samplers import ClassAwareEpochs, class_aware_epoch_samples
from mislas.data.types import LTData
from mislas.evaluation import evaluate_heads, final_evaluation
from mislas.las import LabelAwareSmoothing
from mislas.loop import EpochStats, Step, Targets, check_finite, epoch_loop
from mislas.metrics import classifier_weight_norms
from mislas.mixup import Mixup
from mislas.models import Network, effective_weight
from mislas.progress import log
from mislas.records import EpochRecord, OnGroupEpoch, StageResult
from mislas.seeding import class_aware_seed, epoch_seed
from mislas.stacked import StackedHeads
from mislas.stage2.groups import check_group, subgroups
from mislas.stage2.members import Stage2Member, load_member_state, member_state, new_member

__all__ = ["epoch_step", "train_stage2_group", "train_subgroups"]


def epoch_step(backbone: Network, members: list[Stage2Member], stacked: StackedHeads | None,
               device: torch.device) -> Step:
    """Per batch: one frozen-backbone forward, then every member's head step (stacked or in turn)."""

    def step(x: torch.Tensor, targets: Targets) -> torch.Tensor:
        with dev.autocast(device), torch.no_grad():
            feats = backbone.features(x)
        feats = feats.float()
        if stacked is not None:
            with dev.autocast(device):
                losses = targets.loss(stacked.loss, stacked.logits(feats))
            torch.autograd.backward(losses.sum())  # member g's tensors get the gradient of its own loss only
            stacked.step()
            return losses.detach()
        out = []
        for m in members:
            with dev.autocast(device):
                loss = targets.loss(m.loss_fn, m.head(feats).float())
            m.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            m.optimizer.step()
            out.append(loss.detach())
        return torch.stack(out)

    return step


@dataclass
class _Group:
    """What the epochs of one Stage-2 group share: the frozen backbone, the members, the data order."""

    data: LTData
    cfgs: list[RunConfig]
    device: torch.device
    backbone: Network
    members: list[Stage2Member]
    stacked: StackedHeads | None
    order: ClassAwareEpochs
    generator: torch.Generator
    batches: Batches
    step: Step
    ckpt: Path | None
    done: int

    @property
    def ref(self) -> RunConfig:
        return self.cfgs[0]


def _resume(path: Path, backbone: Network, members: list[Stage2Member], data: LTData,
            cfgs: list[RunConfig]) -> int:
    """Load a Stage-2 checkpoint into the backbone's BN buffers and the members; the last finished epoch."""
    state = checkpoint.load_stage2(path, fingerprint=data.fingerprint, cfgs=cfgs)
    buffers = dict(backbone.body.named_buffers())
    for name, value in state["body_buffers"].items():
        buffers[name].copy_(value)
    for m, member_state_ in zip(members, state["members"]):
        load_member_state(m, member_state_)
    return int(state["epoch"])


def _start(data: LTData, stage1_model: Network, cfgs: list[RunConfig], device: torch.device,
           checkpoint_dir: Path | None, progress: bool, vectorize: bool) -> _Group:
    """The frozen backbone, the members (resumed from ``checkpoint_dir/stage2.pt`` if there), the batches."""
    s2 = cfgs[0].stage2
    backbone = copy.deepcopy(stage1_model)
    stage1_head = backbone.classifier
    if not isinstance(stage1_head, nn.Linear):
        raise ValueError(f"Stage 2 starts from a Stage-1 model with a linear classifier, got {type(stage1_head).__name__}")
    backbone.requires_grad_(False)  # the frozen backbone; each member gets its own head
    members = [new_member(i, cfg, stage1_head, data) for i, cfg in enumerate(cfgs)]
    ckpt = Path(checkpoint_dir) / checkpoint.STAGE2 if checkpoint_dir else None
    done = 0
    if ckpt is not None and ckpt.exists():
        done = _resume(ckpt, backbone, members, data, cfgs)
        log(progress, f"[stage2] resuming after epoch {done} from {ckpt}")
    stacked = StackedHeads([m.head for m in members], [m.optimizer for m in members],
                           [m.loss_fn for m in members]) if vectorize else None
    order = ClassAwareEpochs(data.train.labels, data.num_classes, seed=class_aware_seed(cfgs[0].seed),
                             samples_per_class=s2.samples_per_class,
                             samples_per_epoch=class_aware_epoch_samples(s2.epoch_length, data.class_counts,
                                                                         s2.batch_size))
    generator = torch.Generator()
    batches = train_batches(data, cfgs[0], sampler=order, batch_size=s2.batch_size, generator=generator,
                            samples_per_class=s2.samples_per_class, device=device)
    step = epoch_step(backbone, members, stacked, device)
    return _Group(data, cfgs, device, backbone, members, stacked, order, generator, batches, step, ckpt, done)


def _train_epoch(g: _Group, epoch: int) -> tuple[list[tuple[float, float]], EpochStats]:
    """One reseeded epoch of every member: the lrs it ran at and its mean losses; checked finite, schedules stepped."""
    ref, s2 = g.ref, g.ref.stage2
    seed = epoch_seed(ref.seed, 2, epoch)
    g.generator.manual_seed(seed)
    torch.manual_seed(seed)
    g.order.set_epoch(epoch)
    lrs = [m.lrs() for m in g.members]
    # Shift BN: the frozen body in train mode re-estimates BN statistics on the class-balanced
    # batches, as the MiSLAS reference (train_stage2.py at 0fc381e, lines 303-313: with shift_bn
    # the model, on Places only the added block, in train mode) and Kang et al.'s cRT/LWS
    # (classifier-balancing f162ade, run_networks.py ``train``: model.train() on every
    # network each epoch). The trunk (Places' pretrained part) stays in eval
    # mode (Network.train).
    g.backbone.train()
    g.backbone.body.train(effective_shift_bn(ref))
    for m in g.members:
        m.head.train()
    if g.stacked is not None:
        g.stacked.begin_epoch()
    stats = epoch_loop(g.batches, g.step, width=len(g.members), device=g.device, channels_last=ref.channels_last,
                       mixup=Mixup(s2.mixup_alpha, seed) if s2.mixup else None)
    if g.stacked is not None:
        g.stacked.store()
    check_finite(2, epoch, stats.losses, [m.trained() for m in g.members])
    with warnings.catch_warnings():  # stacked heads step without calling the members' optimizers
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for m in g.members:
            m.scheduler.step()
    return lrs, stats


def _record_epoch(g: _Group, epoch: int, lrs: list[tuple[float, float]], stats: EpochStats, wall: float,
                  progress: bool) -> None:
    """The epoch's validation pass, one record per member, and the progress line."""
    s2, members = g.ref.stage2, g.members
    vals = evaluate_heads(g.backbone, [m.head for m in members], g.data, "val", g.cfgs, g.device)
    for m, (lr, clf_lr), loss, val in zip(members, lrs, stats.losses, vals):
        m.records.append(EpochRecord(stage=2, epoch=epoch, lr=lr, classifier_lr=clf_lr, train_loss=loss,
                                     val=val.summary(), wall_s=wall, steps=stats.steps))
    accs = [v.acc for v in vals]
    eces = [v.ece for v in vals]
    if len(members) == 1:
        name = f"stage2 {s2.method}"
        summary = f"lr {lrs[0][0]:.4g} loss {stats.loss:.4f} val acc {accs[0]:.2f} ECE {eces[0]:.2f}"
    else:
        name = f"stage2 group of {len(members)} {s2.method}"
        summary = (f"loss {min(stats.losses):.4f}..{max(stats.losses):.4f} val acc {min(accs):.2f}.."
                   f"{max(accs):.2f}")
    log(progress, f"[{name}] epoch {epoch}/{s2.epochs} {summary} ({stats.steps} steps, {wall:.1f} s)")


def _results(g: _Group) -> list[StageResult]:
    """Every member's final evaluation on the shared backbone, as a :class:`StageResult`."""
    data, s2 = g.data, g.ref.stage2
    finals = final_evaluation(g.backbone, [m.head for m in g.members], data, g.cfgs, g.device)
    results = []
    for m, final in zip(g.members, finals):
        net = Network(g.backbone.body, g.backbone.feature_dim, data.num_classes, trunk=g.backbone.trunk)
        net.classifier = m.head  # the member's head on the shared (frozen, maybe BN-shifted) backbone
        norms = classifier_weight_norms(effective_weight(m.head).detach().float().cpu())
        extras: dict[str, Any] = {"group_size": len(g.members), "group_index": m.index,
                                  "shift_bn": effective_shift_bn(g.ref),
                                  "steps_per_epoch": math.ceil(len(g.order) / s2.batch_size)}
        if isinstance(m.loss_fn, LabelAwareSmoothing):
            extras["epsilon"] = m.loss_fn.epsilon.detach().cpu().numpy()
            extras["las_target"] = m.cfg.stage2.las_target
        results.append(StageResult(net, final.val, final.test, m.records, norms, extras, final.temperature,
                                   final.val_ts, final.test_ts))
    return results


def train_stage2_group(
    data: LTData,
    stage1_model: Network,
    cfgs: Sequence[RunConfig],
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    on_epoch: OnGroupEpoch | None = None,
    progress: bool = True,
    vectorize: bool = True,
) -> list[StageResult]:
    """Retrain the classifier of copies of ``stage1_model`` for each config of ``cfgs`` on one backbone pass.

    ``cfgs`` must agree on :data:`SHARED_FIELDS` (:func:`check_group`); each member keeps its
    own head, loss, optimizer and schedule, so it ends where it would end alone. Per epoch:
    ``ceil(N/B)+1`` class-aware batches by default (``stage2.epoch_length``), the backbone in
    train mode if shift BN is on (:func:`mislas.config.effective_shift_bn`), optional mixup,
    then one validation pass, a checkpoint ``checkpoint_dir/stage2.pt`` holding every
    member's state and the BN buffers (a rerun resumes after its last finished epoch), and
    ``on_epoch(member index, record)`` for each member. ``vectorize`` trains the heads stacked
    (:class:`mislas.stacked.StackedHeads`, agreement to float rounding); ``False`` steps each
    member's own head and optimizer in turn. Raises :class:`NonFiniteError` (naming epoch
    and member) if a member's mean loss or parameters become non-finite.
    """
    cfgs = list(cfgs)
    check_group(cfgs)
    g = _start(data, stage1_model, cfgs, device, checkpoint_dir, progress, vectorize)
    members = g.members
    t0 = time.perf_counter() - (members[0].records[-1].wall_s if members[0].records else 0.0)
    for epoch in range(g.done + 1, g.ref.stage2.epochs + 1):
        lrs, stats = _train_epoch(g, epoch)
        _record_epoch(g, epoch, lrs, stats, time.perf_counter() - t0, progress)
        if g.ckpt is not None:
            checkpoint.save_stage2(g.ckpt, epoch=epoch, members=[member_state(m) for m in members],
                                   body_buffers=dict(g.backbone.body.named_buffers()), cfgs=cfgs,
                                   fingerprint=data.fingerprint)
        if on_epoch is not None:
            for m in members:
                on_epoch(m.index, m.records[-1])
    return _results(g)


def train_subgroups(data: LTData, stage1_model: Network, cfgs: Sequence[RunConfig], *, device: torch.device,
                    checkpoint_dir: Path | None = None, on_epoch: OnGroupEpoch | None = None,
                    progress: bool = True, vectorize: bool = True) -> list[StageResult]:
    """:func:`train_stage2_group` over any members, one sub-group per shared backbone pass.

    Members that differ in a field the shared pass depends on (:data:`SHARED_FIELDS`, e.g.
    ``shift_bn``: the BN statistics differ) cannot share it, so each such set
    (:func:`mislas.stage2.groups.subgroups`) is its own group, trained one after the other
    with its checkpoint in ``checkpoint_dir/sub<n>/``; results come back in member order, and
    ``on_epoch`` gets member indices of the whole list.
    """
    cfgs = list(cfgs)
    out: list[StageResult | None] = [None] * len(cfgs)
    for n, idx in enumerate(subgroups(cfgs)):
        sub_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"sub{n}"
        forward: OnGroupEpoch | None = None
        if on_epoch is not None:
            def forward(j: int, rec: EpochRecord, idx: list[int] = idx, call: OnGroupEpoch = on_epoch) -> None:
                call(idx[j], rec)

        res = train_stage2_group(data, stage1_model, [cfgs[i] for i in idx], device=device, checkpoint_dir=sub_dir,
                                 on_epoch=forward, progress=progress, vectorize=vectorize)
        for i, r in zip(idx, res):
            out[i] = r
    return [r for r in out if r is not None]
