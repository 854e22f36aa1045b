"""Stage 2 of one config, by method: the trained ones through the engine, τ-norm and CE without it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from mislas.config import RunConfig
from mislas.data.batches import eval_batches
from mislas.data.types import LTData
from mislas.evaluation import Features, finish, predict
from mislas.models import Network, TauNormClassifier
from mislas.progress import log
from mislas.records import EpochRecord, OnEpoch, OnGroupEpoch, StageResult
from mislas.stage2.engine import train_stage2_group

__all__ = ["tau_norm", "train_stage2"]


def train_stage2(
    data: LTData,
    stage1_model: Network,
    cfg: RunConfig,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    on_epoch: OnEpoch | None = None,
    progress: bool = True,
) -> StageResult:
    """Stage 2 of ``cfg.stage2.method`` on a copy of ``stage1_model``: a group of one for the trained methods.

    ``ce`` is Stage 1 alone; ``tau_norm`` picks τ on the validation split. The others run
    :func:`train_stage2_group` with this one config (heads stepped by their own
    ``torch.optim.SGD``), resuming from ``checkpoint_dir/stage2.pt``; ``on_epoch`` gets the
    validation metrics after every epoch (what a scheduler such as ASHA acts on).
    """
    method = cfg.stage2.method
    if method == "ce":
        return finish(copy.deepcopy(stage1_model), data, cfg, device, [])
    if method == "tau_norm":
        return tau_norm(copy.deepcopy(stage1_model), data, cfg, device, progress)
    forward: OnGroupEpoch | None = None
    if on_epoch is not None:
        callback = on_epoch

        def forward(_index: int, record: EpochRecord) -> None:
            callback(record)

    return train_stage2_group(data, stage1_model, [cfg], device=device, checkpoint_dir=checkpoint_dir,
                              on_epoch=forward, progress=progress, vectorize=False)[0]


def tau_norm(model: Network, data: LTData, cfg: RunConfig, device: torch.device, progress: bool) -> StageResult:
    """τ-normalisation with τ chosen on the validation split (never on test)."""
    linear = model.classifier
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"tau_norm starts from a Stage-1 model with a linear classifier, got {type(linear).__name__}")
    feats, labels = predict(Features(model), eval_batches(data, "val", cfg, device), device, cfg.channels_last)
    best_tau, best_acc = 0.0, -1.0
    for tau in cfg.stage2.tau_grid:
        head = TauNormClassifier(linear, tau).cpu()
        acc = float((head(feats).argmax(1) == labels).float().mean())
        if acc > best_acc + 1e-12:
            best_tau, best_acc = float(tau), acc
    log(progress, f"[stage2] tau_norm: tau = {best_tau} (val acc {100 * best_acc:.2f} %)")
    model.classifier = TauNormClassifier(linear, best_tau)
    return finish(model, data, cfg, device, [], {"tau": best_tau})
