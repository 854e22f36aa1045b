"""The one epoch loop of both stages, and the divergence check after each epoch.

Stage 1 (:func:`run_epoch`: the whole network) and Stage 2 (the engine's step: G heads on one
frozen backbone pass) differ only in the :data:`Step` they hand to :func:`epoch_loop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mislas import device as dev
from mislas.data.batches import Batches
from mislas.errors import NonFiniteError
from mislas.mixup import Mixup
from mislas.models import Network

__all__ = ["EpochStats", "Step", "Targets", "check_finite", "epoch_loop", "run_epoch"]


@dataclass(frozen=True)
class Targets:
    """A batch's labels; with mixup also the partners' labels and λ (loss = λ·L(y) + (1−λ)·L(y_b))."""

    y: torch.Tensor
    y_b: torch.Tensor | None = None
    lam: float = 1.0

    def loss(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """The batch loss under ``fn``: λ-weighted over both label sets with mixup, else ``fn(logits, y)``."""
        if self.y_b is None:
            return fn(logits, self.y)
        return self.lam * fn(logits, self.y) + (1.0 - self.lam) * fn(logits, self.y_b)


@dataclass(frozen=True)
class EpochStats:
    """One epoch of the loop: mean training loss per trained model (one, or a group's G), steps, samples."""

    losses: list[float]
    steps: int
    samples: int

    @property
    def loss(self) -> float:
        """The first (or only) model's mean training loss."""
        return self.losses[0]


Step = Callable[[torch.Tensor, Targets], torch.Tensor]
"""One optimizer step on a batch (inputs on the device, targets); returns the detached loss(es) [G]."""


def epoch_loop(batches: Batches, step: Step, *, width: int, device: torch.device, channels_last: bool,
               mixup: Mixup | None) -> EpochStats:
    """The one epoch loop of both stages: batches to the device, mixup, ``step``, loss sums.

    Losses are summed on the device, without a host sync per batch; float64 gives the same
    sum as Python floats.
    """
    total = torch.zeros(width, dtype=dev.sum_dtype(device), device=device)
    count = steps = 0
    for x, y in batches:
        x, y = dev.to_device(x, device, channels_last), y.to(device, non_blocking=True)
        if mixup is not None:
            x, y_a, y_b, lam = mixup(x, y)
            targets = Targets(y_a, y_b, lam)
        else:
            targets = Targets(y)
        losses = step(x, targets)
        total += losses.to(total.dtype) * y.shape[0]
        count += int(y.shape[0])
        steps += 1
    means = (total / max(count, 1)).tolist()
    return EpochStats([float(v) for v in means], steps, count)


def run_epoch(
    model: Network,
    batches: Batches,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    train_backbone: bool,
    backbone_bn_train: bool,
    mixup: Mixup | None = None,
    channels_last: bool = False,
    parallel: nn.Module | None = None,
) -> EpochStats:
    """One pass of a whole model over ``batches`` (Stage 1); mean training loss and steps.

    ``train_backbone`` lets gradients reach the body; otherwise the features are computed
    without gradient and only the classifier learns. ``backbone_bn_train`` runs the body in
    train mode (BN statistics update). ``parallel``: ``model`` wrapped for data-parallel
    training (:func:`mislas.distributed.data_parallel`); the forward goes through it so that
    its gradients are averaged over the ranks.
    """
    model.train()
    model.body.train(backbone_bn_train)
    forward = parallel if parallel is not None else model

    def step(x: torch.Tensor, targets: Targets) -> torch.Tensor:
        with dev.autocast(device):
            if train_backbone:
                logits: torch.Tensor = forward(x)  # Network.forward: classifier(features(x))
                loss = targets.loss(loss_fn, logits.float())
            else:
                with torch.no_grad():
                    feats = model.features(x).float()
                loss = targets.loss(loss_fn, model.classifier(feats).float())
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        return loss.detach().reshape(1)

    return epoch_loop(batches, step, width=1, device=device, channels_last=channels_last, mixup=mixup)


def check_finite(stage: int, epoch: int, losses: Sequence[float], params: Sequence[Iterable[torch.Tensor]]) -> None:
    """NonFiniteError naming the epoch (and the group member) if a mean loss or a trained tensor is NaN/inf."""
    size = len(losses)
    for i, (loss, tensors) in enumerate(zip(losses, params)):
        bad = None
        if not math.isfinite(loss):
            bad = f"mean training loss {loss}"
        elif not all(bool(torch.isfinite(t).all()) for t in tensors):
            bad = "non-finite parameters"
        if bad is not None:
            who = f" for group member {i} of {size}" if size > 1 else ""
            raise NonFiniteError(f"stage {stage}, epoch {epoch}: training diverged{who} ({bad})",
                                 stage=stage, epoch=epoch, member=i if size > 1 else None)
