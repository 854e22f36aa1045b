"""One member of a Stage-2 group: its head, loss, optimizer and schedule, built once, and its state.

Every method's recipe lives in :func:`new_member` (MiSLAS: W + ΔW and the per-class scale
under LAS; cRT: a re-initialised classifier under CE; LWS: the scale alone under CE); the
engine (:mod:`mislas.stage2.engine`) only steps and evaluates what it builds.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mislas.config import RunConfig, effective_stage2_schedule
from mislas.data.types import LTData
from mislas.errors import UsageError
from mislas.las import LabelAwareSmoothing
from mislas.models import ScaledClassifier
from mislas.records import EpochRecord, epoch_records
from mislas.schedules import cosine_factor
from mislas.seeding import epoch_seed

__all__ = ["Stage2Member", "load_member_state", "member_state", "new_member"]


@dataclass
class Stage2Member:
    """One config of a Stage-2 group: its head, loss, optimizer, schedule and epoch records."""

    index: int
    cfg: RunConfig
    head: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    records: list[EpochRecord] = field(default_factory=list)

    def lr_of(self, name: str) -> float:
        """The lr of the param group called ``name`` (NaN when there is none)."""
        for group in self.optimizer.param_groups:
            if group.get("name") == name:
                return float(group["lr"])
        return float("nan")

    def lrs(self) -> tuple[float, float]:
        """(lr, classifier lr): the scale's lr (the classifier's for cRT) and the classifier's (NaN for LWS)."""
        lr, clf_lr = self.lr_of("scale"), self.lr_of("classifier")
        return (clf_lr if math.isnan(lr) else lr), clf_lr

    def trained(self) -> list[torch.Tensor]:
        """Every parameter the optimizer trains."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def new_member(index: int, cfg: RunConfig, stage1_head: nn.Linear, data: LTData) -> Stage2Member:
    """The one construction of a method's head, loss, optimizer (named param groups) and cosine schedule.

    MiSLAS follows the reference's train_stage2.py (dvlab-research/MiSLAS at 0fc381e): one SGD
    over two param groups, the classifier (W + ΔW) and the per-class scale (lines 241-244), with the classifier's lr at ``lr_factor``
    (our ``dw_ratio``) times the cosine lr and the scale's at the cosine lr, set at the start of
    each epoch (its ``adjust_learning_rate``); weight decay applies to both groups there too.
    """
    s2 = cfg.stage2
    linear = copy.deepcopy(stage1_head)
    head: nn.Module
    loss_fn: nn.Module
    if s2.method == "mislas":
        head = ScaledClassifier(linear, train_weight=True, train_scale=True)
        loss_fn = LabelAwareSmoothing(data.class_counts, s2.eps_1, s2.eps_k, form=s2.form, p=s2.p,
                                      target=s2.las_target)
        groups = [
            {"params": list(linear.parameters()), "lr": s2.lr * s2.dw_ratio, "name": "classifier"},
            {"params": [head.scale], "lr": s2.lr, "name": "scale"},
        ]
    elif s2.method == "crt":
        torch.manual_seed(epoch_seed(cfg.seed, 2, 0))  # the re-initialisation is part of the run's seed
        linear.reset_parameters()
        linear.requires_grad_(True)
        head = linear
        loss_fn = nn.CrossEntropyLoss()
        groups = [{"params": list(linear.parameters()), "lr": s2.lr, "name": "classifier"}]
    elif s2.method == "lws":
        head = ScaledClassifier(linear, train_weight=False, train_scale=True)
        loss_fn = nn.CrossEntropyLoss()
        groups = [{"params": [head.scale], "lr": s2.lr, "name": "scale"}]
    else:
        raise UsageError(f"stage2.method {s2.method!r} has no Stage-2 training")
    optimizer = torch.optim.SGD(groups, lr=s2.lr, momentum=s2.momentum, weight_decay=s2.weight_decay)
    epochs = max(s2.epochs, 1)
    shift = 1 if effective_stage2_schedule(s2) == "cosine_kang" else 0  # Kang's schedule runs one epoch ahead
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step + shift, epochs))
    return Stage2Member(index, cfg, head, loss_fn.to(linear.weight.device), optimizer, scheduler)


def member_state(m: Stage2Member) -> dict[str, Any]:
    """What a checkpoint keeps of a member: head, optimizer, schedule and records."""
    return {"head": m.head.state_dict(), "optimizer": m.optimizer.state_dict(),
            "scheduler": m.scheduler.state_dict(), "records": [asdict(r) for r in m.records]}


def load_member_state(m: Stage2Member, state: dict[str, Any]) -> None:
    """A member back where :func:`member_state` left it."""
    m.head.load_state_dict(state["head"])
    m.optimizer.load_state_dict(state["optimizer"])
    m.scheduler.load_state_dict(state["scheduler"])
    m.records = epoch_records(state["records"])
