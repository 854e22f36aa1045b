"""Stage 1 and Stage 2 as one epoch loop, parameterised by criterion, sampler and what trains.

Stage 1 trains the whole network with cross-entropy on mixup pairs and instance-balanced
sampling. Stage 2 freezes the backbone and retrains the classifier with class-balanced
sampling: MiSLAS (LAS, shift BN, per-class scale, ΔW learning-rate ratio) or a baseline
(cRT, LWS, τ-norm; CE is Stage 1 alone). Every random component owns a generator seeded
from (seed, stage, epoch), so an interrupted run resumed at its last finished epoch draws
the same data order as an uninterrupted one.

Stage 2 is one engine, :func:`train_stage2_group`: G configs ("members") that can share the
frozen backbone's pass (:func:`check_group`) train on one backbone forward per batch, each
with its own head, loss, optimizer and schedule (built once, by ``_new_member``), evaluated
by one pass per eval batch (:func:`evaluate_heads`), checkpointed per epoch with every
member's state. A single run, :func:`train_stage2`, is a group of one.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mislas import checkpoint, fastpath
from mislas.calibration import temperature_scaled_results
from mislas.config import TRAINED_METHODS, RunConfig, Stage1Config, effective_shift_bn, effective_stage2_schedule
from mislas.data import LTData, eval_transform, make_loader, train_transform
from mislas.data.loaders import Order, Shard
from mislas.data.samplers import ClassAwareEpochs, class_aware_epoch_samples
from mislas.distributed import broadcast, current_shard, data_parallel, weighted_means
from mislas.errors import NonFiniteError, UsageError
from mislas.las import LabelAwareSmoothing
from mislas.metrics import EvalResult, classifier_weight_norms, evaluate_logits
from mislas.models import Network, ScaledClassifier, TauNormClassifier, build_model, effective_weight
from mislas.stacked import StackedHeads

OnEpoch = Callable[["EpochRecord"], None]
OnGroupEpoch = Callable[[int, "EpochRecord"], None]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EpochRecord:
    """What one finished epoch reports: to the console, to checkpoints, to Ray Tune.

    ``steps``: optimizer steps (batches) of the epoch; 0 in records written before it existed.
    """

    stage: int
    epoch: int
    lr: float
    classifier_lr: float
    train_loss: float
    val: dict[str, float | None]
    wall_s: float
    steps: int = 0


@dataclass
class StageResult:
    """A trained model with its validation and test evaluation."""

    model: Network
    val: EvalResult
    test: EvalResult
    epochs: list[EpochRecord] = field(default_factory=list)
    weight_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    extras: dict[str, Any] = field(default_factory=dict)
    # post-hoc temperature scaling (Guo et al. 2017): T fitted on val, and val/test with logits / T
    temperature: float | None = None
    val_ts: EvalResult | None = None
    test_ts: EvalResult | None = None


@dataclass(frozen=True)
class FinalEvaluation:
    """One head's final evaluation: val and test, and both again after temperature scaling."""

    val: EvalResult
    test: EvalResult
    temperature: float
    val_ts: EvalResult
    test_ts: EvalResult


# --- small pieces ---------------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; UsageError otherwise.

    Checked before any data is loaded, so a missing GPU fails in one line, not mid-run.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"device must be one of auto, cpu, cuda, cuda:N, mps, got {name!r}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} asks for CUDA, which is not available here "
                             f"(torch {torch.__version__}); use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"device {name!r} asks for MPS, which is not available here; use auto or cpu")
        return device
    raise UsageError(f"device must be one of auto, cpu, cuda, cuda:N, mps, got {name!r}")


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (run seed, stage, epoch)."""
    return (seed * 1_000_003 + stage * 10_007 + epoch) % (2**63 - 1)


def class_aware_seed(seed: int) -> int:
    """The seed of Stage 2's class-aware stream (:class:`ClassAwareEpochs`), apart from the epoch seeds."""
    return (epoch_seed(seed, 2, 0) + 0x9E3779B97F4A7C15) % (2**63 - 1)


def stage1_lr_factor(cfg: Stage1Config, epoch: int) -> float:
    """Learning-rate factor of 1-based ``epoch``: warm-up + multistep (CIFAR) or cosine."""
    if cfg.schedule == "cosine":
        return cosine_factor(epoch - 1, cfg.epochs)
    if epoch <= cfg.warmup_epochs:
        return epoch / cfg.warmup_epochs
    return float(0.1 ** sum(epoch > m for m in cfg.milestones))


def cosine_factor(step: int, total: int) -> float:
    """½(1 + cos(π·e/E)) for 0-based epoch e: lr at the start of each of E epochs."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


class Mixup:
    """Batch mixup: x = λx_i + (1−λ)x_j, λ ~ Beta(α, α), j a permutation of the batch.

    Hand-written rather than ``torchvision.transforms.v2.MixUp`` because it owns its
    generator (reproducible, resumable) and returns both label sets for the λ-weighted loss.
    """

    def __init__(self, alpha: float, seed: int, stream: int = 0) -> None:
        """``stream``: a data-parallel rank; each rank draws its own λ and pairs (as the
        reference's per-process ``mixup_data``), rank 0 the single-process draws."""
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha > 0 must hold, got alpha={alpha}")
        self.alpha = alpha
        if stream:
            seed = int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.randperm(x.shape[0], generator=self.gen)
        if x.device.type == "cuda":  # a pageable host->device copy would wait for the GPU every step
            perm = perm.pin_memory().to(x.device, non_blocking=True)
        else:
            perm = perm.to(x.device)
        return lam * x + (1.0 - lam) * x[perm], y, y[perm], lam

    def __repr__(self) -> str:
        return f"Mixup(alpha={self.alpha})"


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for loss sums on the device (MPS has none: float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (same math, faster); plain fp32 on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# --- the one loop ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Targets:
    """A batch's labels; with mixup also the partners' labels and λ (loss = λ·L(y) + (1−λ)·L(y_b))."""

    y: torch.Tensor
    y_b: torch.Tensor | None = None
    lam: float = 1.0

    def loss(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
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
        return self.losses[0]


Step = Callable[[torch.Tensor, Targets], torch.Tensor]
"""One optimizer step on a batch (inputs on the device, targets); returns the detached loss(es) [G]."""


def _loop(batches: Batches, step: Step, *, width: int, device: torch.device, channels_last: bool,
          mixup: Mixup | None) -> EpochStats:
    """The one epoch loop of both stages: batches to the device, mixup, ``step``, loss sums.

    Losses are summed on the device, without a host sync per batch; float64 gives the same
    sum as Python floats.
    """
    total = torch.zeros(width, dtype=_sum_dtype(device), device=device)
    count = steps = 0
    for x, y in batches:
        x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
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
        with _autocast(device):
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

    return _loop(batches, step, width=1, device=device, channels_last=channels_last, mixup=mixup)


def _check_finite(stage: int, epoch: int, losses: Sequence[float], params: Sequence[Iterable[torch.Tensor]]) -> None:
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


# --- evaluation -----------------------------------------------------------------------------

@torch.no_grad()
def predict(
    model: nn.Module, batches: Batches, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (logits, or what ``model`` returns) and labels of a whole split, on the CPU, float32."""
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        with _autocast(device):
            logits.append(model(_to_device(x, device, channels_last)).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def predict_heads(backbone: Network, heads: Sequence[nn.Module], batches: Batches, device: torch.device,
                  channels_last: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every head's logits on a split from one backbone pass per batch (CPU, float32), and the labels."""
    backbone.eval()
    for h in heads:
        h.eval()
    per_batch, labels = [], []
    for x, y in batches:
        with _autocast(device):
            feats = backbone.features(_to_device(x, device, channels_last))
            per_batch.append(torch.stack([h(feats).float() for h in heads]).cpu())  # [G, B, K]
        labels.append(y.cpu())
    if not per_batch:
        return [torch.zeros(0, 0) for _ in heads], torch.zeros(0, dtype=torch.int64)
    return list(torch.cat(per_batch, 1).unbind(0)), torch.cat(labels)


def eval_batches(data: LTData, split: str, cfg: RunConfig, device: torch.device | None = None) -> Batches:
    """Sequential eval batches: on ``device`` via the fast path when ``cfg.data.loader`` selects it."""
    if device is not None and fastpath.selected(getattr(data, split), cfg.data.loader):
        return fastpath.eval_batches(data, split, device=device, batch_size=cfg.eval.batch_size,
                                     channels_last=cfg.channels_last)
    return make_loader(
        getattr(data, split), eval_transform(data), batch_size=cfg.eval.batch_size, sampler="sequential",
        num_classes=data.num_classes, generator=torch.Generator().manual_seed(0), num_workers=cfg.data.num_workers,
    )


def evaluate_heads(backbone: Network, heads: Sequence[nn.Module], data: LTData, split: str,
                   cfgs: Sequence[RunConfig], device: torch.device) -> list[EvalResult]:
    """The one evaluation path: each head (with its config's eval settings) on ``split``, one backbone pass."""
    ref = cfgs[0]
    logits, labels = predict_heads(backbone, heads, eval_batches(data, split, ref, device), device,
                                   ref.channels_last)
    out = []
    for cfg, lg in zip(cfgs, logits):
        e = cfg.eval
        out.append(evaluate_logits(lg, labels, data.class_counts, n_bins=e.n_bins, many_above=e.many_above,
                                   few_below=e.few_below, index_ranges=e.index_ranges))
    return out


def final_evaluation(backbone: Network, heads: Sequence[nn.Module], data: LTData, cfgs: Sequence[RunConfig],
                     device: torch.device) -> list[FinalEvaluation]:
    """The one final evaluation: val and test logits of every head (one backbone pass per split),
    their metrics, and temperature scaling fitted on val (:mod:`mislas.calibration`)."""
    ref = cfgs[0]
    val_logits, val_labels = predict_heads(backbone, heads, eval_batches(data, "val", ref, device), device,
                                           ref.channels_last)
    test_logits, test_labels = predict_heads(backbone, heads, eval_batches(data, "test", ref, device), device,
                                             ref.channels_last)
    out = []
    for cfg, lv, lt in zip(cfgs, val_logits, test_logits):
        e = cfg.eval
        kwargs: dict[str, Any] = {"n_bins": e.n_bins, "many_above": e.many_above, "few_below": e.few_below,
                                  "index_ranges": e.index_ranges}
        val = evaluate_logits(lv, val_labels, data.class_counts, **kwargs)
        test = evaluate_logits(lt, test_labels, data.class_counts, **kwargs)
        t, val_ts, test_ts = temperature_scaled_results(lv, val_labels, lt, test_labels, data.class_counts, **kwargs)
        out.append(FinalEvaluation(val, test, t, val_ts, test_ts))
    return out


def evaluate_split(model: Network, data: LTData, split: str, cfg: RunConfig, device: torch.device) -> EvalResult:
    """Top-1 (All/Many/Medium/Few), ECE, MCE, NLL and reliability bins on ``split``."""
    return evaluate_heads(model, [model.classifier], data, split, [cfg], device)[0]


def _finish(model: Network, data: LTData, cfg: RunConfig, device: torch.device, records: list[EpochRecord],
            extras: dict[str, Any] | None = None) -> StageResult:
    final = final_evaluation(model, [model.classifier], data, [cfg], device)[0]
    norms = classifier_weight_norms(effective_weight(model.classifier).detach().float().cpu())
    return StageResult(model, final.val, final.test, records, norms, extras or {}, final.temperature, final.val_ts,
                       final.test_ts)


def train_batches(data: LTData, cfg: RunConfig, *, sampler: Order, batch_size: int, generator: torch.Generator,
                  samples_per_class: int = 4, device: torch.device | None = None, shard: Shard = Shard()) -> Batches:
    """Training batches: device-resident (:mod:`mislas.fastpath`) when selected, else a DataLoader.

    Either way the order comes from ``sampler`` (a name, drawn from ``generator``; or Stage 2's
    :class:`ClassAwareEpochs`) and the augmentation from ``generator``, reseeded per epoch.
    """
    if device is not None and fastpath.selected(data.train, cfg.data.loader):
        return fastpath.train_batches(data, device=device, sampler=sampler, batch_size=batch_size,
                                      generator=generator, samples_per_class=samples_per_class,
                                      channels_last=cfg.channels_last, shard=shard)
    return make_loader(
        data.train, train_transform(data), batch_size=batch_size, sampler=sampler, num_classes=data.num_classes,
        generator=generator, num_workers=cfg.data.num_workers, samples_per_class=samples_per_class, shard=shard,
    )


# --- Stage 1 --------------------------------------------------------------------------------

def new_model(data: LTData, cfg: RunConfig, device: torch.device, *, load_pretrained: bool = True) -> Network:
    model = build_model(cfg.stage1.arch, data.num_classes, data.in_channels, cfg.stage1.pretrained,
                        load_pretrained=load_pretrained).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def load_stage1(path: Path, data: LTData, cfg: RunConfig, device: torch.device) -> Network:
    """A finished Stage-1 model, after checking it was made on this data with this recipe."""
    payload = checkpoint.load(path)
    checkpoint.check_compatible(payload, path, fingerprint=data.fingerprint, stage1=asdict(cfg.stage1))
    if payload.get("kind") != "stage1":
        raise UsageError(f"checkpoint {path} is not a finished Stage-1 checkpoint")
    model = new_model(data, cfg, device, load_pretrained=False)
    model.load_state_dict(payload["model"])
    return model


def _records(raw: Iterable[dict[str, Any]]) -> list[EpochRecord]:
    return [EpochRecord(**r) for r in raw]


def train_stage1(
    data: LTData,
    cfg: RunConfig,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    on_epoch: OnEpoch | None = None,
    progress: bool = True,
) -> StageResult:
    """Train (or resume, or reuse) Stage 1 in this process and evaluate it;
    ``checkpoint_dir/stage1.pt`` when finished."""
    final = Path(checkpoint_dir) / "stage1.pt" if checkpoint_dir else None
    if final is not None and final.exists():
        _log(progress, f"[stage1] reusing {final}")
        model = load_stage1(final, data, cfg, device)
        return _finish(model, data, cfg, device, [], {"reused": str(final)})
    model, records = fit_stage1(data, cfg, device=device, checkpoint_dir=checkpoint_dir, on_epoch=on_epoch,
                                progress=progress)
    return evaluate_stage1(model, data, cfg, device, records)


def evaluate_stage1(model: Network, data: LTData, cfg: RunConfig, device: torch.device,
                    records: list[EpochRecord]) -> StageResult:
    """A trained Stage-1 model's result: val/test evaluation, temperature scaling, weight norms."""
    return _finish(model, data, cfg, device, records)


def _load_partial(partial: Path | None, data: LTData, s1: Stage1Config) -> dict[str, Any] | None:
    if partial is None or not partial.exists():
        return None
    state = checkpoint.load(partial)
    checkpoint.check_compatible(state, partial, fingerprint=data.fingerprint, stage1=asdict(s1))
    state["path"] = str(partial)
    return state


def fit_stage1(
    data: LTData,
    cfg: RunConfig,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    on_epoch: OnEpoch | None = None,
    progress: bool = True,
) -> tuple[Network, list[EpochRecord]]:
    """Stage 1's training loop (resumed from ``checkpoint_dir/stage1.partial.pt`` if there);
    writes ``checkpoint_dir/stage1.pt`` at the end. No evaluation (:func:`train_stage1` adds it).

    Inside a ``torch.distributed`` process group each process is one rank of a data-parallel
    run, as the reference's train_stage1.py (main_worker) trains: the global batch of the
    recipe (Table 6) is split over the ranks (``batch_size / world`` each; the learning rate is
    the recipe's, since the global batch is), each rank trains on its shard of the epoch's
    global shuffle (:class:`mislas.data.loaders.Shard`) with its own mixup draws, DDP averages
    the gradients, BN keeps per-rank batch statistics. Rank 0 alone reads and writes the
    checkpoints (its resume state is broadcast) and logs; every rank returns the same model.
    """
    s1 = cfg.stage1
    shard = current_shard()
    if s1.batch_size % shard.world:
        raise UsageError(f"stage1.batch_size={s1.batch_size} must be a multiple of the {shard.world} data-parallel "
                         f"workers (the global batch is split evenly over them)")
    main = shard.rank == 0
    final = Path(checkpoint_dir) / "stage1.pt" if checkpoint_dir and main else None
    partial = Path(checkpoint_dir) / "stage1.partial.pt" if checkpoint_dir and main else None
    torch.manual_seed(epoch_seed(cfg.seed, 1, 0))  # the initial weights are part of the run's seed
    model = new_model(data, cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=s1.lr, momentum=s1.momentum, weight_decay=s1.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: stage1_lr_factor(s1, step + 1))
    records: list[EpochRecord] = []
    start = 1
    state = broadcast(_load_partial(partial, data, s1))
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        records = _records(state["records"])
        start = state["epoch"] + 1
        _log(main, f"[stage1] resuming after epoch {state['epoch']} from {state['path']}")  # always said
    parallel = data_parallel(model, device) if shard.world > 1 else None

    generator = torch.Generator()
    batches = train_batches(data, cfg, sampler="instance", batch_size=s1.batch_size // shard.world,
                            generator=generator, device=device, shard=shard)
    t0 = time.perf_counter() - (records[-1].wall_s if records else 0.0)
    for epoch in range(start, s1.epochs + 1):
        seed = epoch_seed(cfg.seed, 1, epoch)
        generator.manual_seed(seed)
        torch.manual_seed(seed)
        lr = optimizer.param_groups[0]["lr"]
        stats = run_epoch(
            model, batches, loss_fn=nn.functional.cross_entropy, optimizer=optimizer, device=device,
            train_backbone=True, backbone_bn_train=True,
            mixup=Mixup(s1.mixup_alpha, seed, stream=shard.rank) if s1.mixup else None,
            channels_last=cfg.channels_last, parallel=parallel,
        )
        loss = stats.loss
        if shard.world > 1:  # the loss over all ranks' samples
            loss = weighted_means([stats.loss * stats.samples], stats.samples, device)[0][0]
        _check_finite(1, epoch, [loss], [[]])
        scheduler.step()
        record = EpochRecord(stage=1, epoch=epoch, lr=lr, classifier_lr=lr, train_loss=loss, val={},
                             wall_s=time.perf_counter() - t0, steps=stats.steps)
        records.append(record)
        workers = f", {shard.world} workers" if shard.world > 1 else ""
        _log(progress and main, f"[stage1] epoch {epoch}/{s1.epochs} lr {lr:.4g} loss {loss:.4f} "
                                f"({stats.steps} steps{workers}, {record.wall_s:.1f} s)")
        if partial is not None:
            checkpoint.save_atomic(
                {"kind": "stage1_partial", "epoch": epoch, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "records": [asdict(r) for r in records], "config": cfg.to_dict(),
                 "data_fingerprint": data.fingerprint},
                partial,
            )
        if on_epoch is not None:
            on_epoch(record)

    if final is not None:
        checkpoint.save_atomic(
            {"kind": "stage1", "model": model.state_dict(), "config": cfg.to_dict(),
             "data_fingerprint": data.fingerprint, "records": [asdict(r) for r in records]},
            final,
        )
        if partial is not None:
            partial.unlink(missing_ok=True)
    return model, records


# --- Stage 2: which configs can share a backbone pass ----------------------------------------

GROUPABLE_METHODS = TRAINED_METHODS

# What makes two members' backbone passes identical: (key in errors, getter). Everything else
# (ε_1, ε_K, form, p, LAS target, ΔW ratio, lr, momentum, weight decay, eval bins) is per member.
SHARED_FIELDS: tuple[tuple[str, Callable[[RunConfig], Any]], ...] = (
    ("stage2.method", lambda c: c.stage2.method),
    ("seed", lambda c: c.seed),
    ("stage2.batch_size", lambda c: c.stage2.batch_size),
    ("stage2.samples_per_class", lambda c: c.stage2.samples_per_class),
    ("stage2.shift_bn", effective_shift_bn),
    ("stage2.epochs", lambda c: c.stage2.epochs),
    ("stage2.epoch_length", lambda c: c.stage2.epoch_length),
    ("stage2.mixup", lambda c: c.stage2.mixup),
    ("stage2.mixup_alpha", lambda c: c.stage2.mixup_alpha if c.stage2.mixup else None),
    ("channels_last", lambda c: c.channels_last),
    ("data.loader", lambda c: c.data.loader),
    ("eval.batch_size", lambda c: c.eval.batch_size),
)


def check_group(cfgs: Sequence[RunConfig]) -> None:
    """UsageError unless ``cfgs`` can share one backbone pass, naming the first field they differ in."""
    if not cfgs:
        raise UsageError("a Stage-2 group needs at least one config, got none")
    for name, get in SHARED_FIELDS:
        values = [get(c) for c in cfgs]
        if any(v != values[0] for v in values[1:]):
            shown = sorted({repr(v) for v in values})
            raise UsageError(f"all configs of a Stage-2 group must share {name}, got {', '.join(shown)}")
    method = cfgs[0].stage2.method
    if method not in GROUPABLE_METHODS:
        raise UsageError(f"stage2.method must be one of {', '.join(GROUPABLE_METHODS)} to train in a Stage-2 "
                         f"group (the others train nothing), got {method!r}")


# --- Stage 2: one member -------------------------------------------------------------------

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
        for group in self.optimizer.param_groups:
            if group.get("name") == name:
                return float(group["lr"])
        return float("nan")

    def lrs(self) -> tuple[float, float]:
        """(lr, classifier lr): the scale's lr (the classifier's for cRT) and the classifier's (NaN for LWS)."""
        lr, clf_lr = self.lr_of("scale"), self.lr_of("classifier")
        return (clf_lr if math.isnan(lr) else lr), clf_lr

    def trained(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def _new_member(index: int, cfg: RunConfig, stage1_head: nn.Linear, data: LTData) -> Stage2Member:
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


def _member_state(m: Stage2Member) -> dict[str, Any]:
    return {"head": m.head.state_dict(), "optimizer": m.optimizer.state_dict(),
            "scheduler": m.scheduler.state_dict(), "records": [asdict(r) for r in m.records]}


def _load_member_state(m: Stage2Member, state: dict[str, Any]) -> None:
    m.head.load_state_dict(state["head"])
    m.optimizer.load_state_dict(state["optimizer"])
    m.scheduler.load_state_dict(state["scheduler"])
    m.records = _records(state["records"])


def checkpoint_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as stored in checkpoints (tuples as lists, so comparisons after loading hold)."""
    raw = cfg.to_dict()
    return {k: ({kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} if isinstance(v, dict) else v)
            for k, v in raw.items()}


def _identity(cfg: RunConfig) -> tuple[Any, Any]:
    """What a Stage-2 checkpoint must agree on to be resumed: the Stage-2 section and the seed."""
    raw = checkpoint_config(cfg)
    return raw["stage2"], raw["seed"]


# --- Stage 2: the engine -------------------------------------------------------------------

def _epoch_step(backbone: Network, members: list[Stage2Member], stacked: StackedHeads | None,
                device: torch.device) -> Step:
    """Per batch: one frozen-backbone forward, then every member's head step (stacked or in turn)."""

    def step(x: torch.Tensor, targets: Targets) -> torch.Tensor:
        with _autocast(device), torch.no_grad():
            feats = backbone.features(x)
        feats = feats.float()
        if stacked is not None:
            with _autocast(device):
                losses = targets.loss(stacked.loss, stacked.logits(feats))
            torch.autograd.backward(losses.sum())  # member g's tensors get the gradient of its own loss only
            stacked.step()
            return losses.detach()
        out = []
        for m in members:
            with _autocast(device):
                loss = targets.loss(m.loss_fn, m.head(feats).float())
            m.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            m.optimizer.step()
            out.append(loss.detach())
        return torch.stack(out)

    return step


def _resume(path: Path, backbone: Network, members: list[Stage2Member], data: LTData,
            cfgs: list[RunConfig]) -> int:
    """Load a Stage-2 checkpoint into the backbone's BN buffers and the members; the last finished epoch."""
    state = checkpoint.load(path)
    checkpoint.check_compatible(state, path, fingerprint=data.fingerprint, stage1=asdict(cfgs[0].stage1))
    if state.get("kind") != "stage2" or "members" not in state:
        raise UsageError(f"checkpoint {path} is not a checkpoint of this Stage-2 engine; delete it to restart Stage 2")
    saved = [(c["stage2"], c["seed"]) for c in state["configs"]]
    if saved != [_identity(c) for c in cfgs]:
        raise UsageError(f"checkpoint {path} belongs to another Stage-2 config (or group of configs)")
    buffers = dict(backbone.body.named_buffers())
    for name, value in state["body_buffers"].items():
        buffers[name].copy_(value)
    for m, member_state in zip(members, state["members"]):
        _load_member_state(m, member_state)
    return int(state["epoch"])


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
    ref = cfgs[0]
    s2 = ref.stage2
    backbone = copy.deepcopy(stage1_model)
    stage1_head = backbone.classifier
    if not isinstance(stage1_head, nn.Linear):
        raise ValueError(f"Stage 2 starts from a Stage-1 model with a linear classifier, got {type(stage1_head).__name__}")
    backbone.requires_grad_(False)  # the frozen backbone; each member gets its own head
    members = [_new_member(i, cfg, stage1_head, data) for i, cfg in enumerate(cfgs)]
    ckpt = Path(checkpoint_dir) / "stage2.pt" if checkpoint_dir else None
    done = 0
    if ckpt is not None and ckpt.exists():
        done = _resume(ckpt, backbone, members, data, cfgs)
        _log(progress, f"[stage2] resuming after epoch {done} from {ckpt}")
    stacked = StackedHeads([m.head for m in members], [m.optimizer for m in members],
                           [m.loss_fn for m in members]) if vectorize else None
    shift_bn = effective_shift_bn(ref)
    order = ClassAwareEpochs(data.train.labels, data.num_classes, seed=class_aware_seed(ref.seed),
                             samples_per_class=s2.samples_per_class,
                             samples_per_epoch=class_aware_epoch_samples(s2.epoch_length, data.class_counts,
                                                                         s2.batch_size))
    generator = torch.Generator()
    batches = train_batches(data, ref, sampler=order, batch_size=s2.batch_size, generator=generator,
                            samples_per_class=s2.samples_per_class, device=device)
    step = _epoch_step(backbone, members, stacked, device)
    name = f"stage2 {s2.method}" if len(members) == 1 else f"stage2 group of {len(members)} {s2.method}"
    t0 = time.perf_counter() - (members[0].records[-1].wall_s if members[0].records else 0.0)
    for epoch in range(done + 1, s2.epochs + 1):
        seed = epoch_seed(ref.seed, 2, epoch)
        generator.manual_seed(seed)
        torch.manual_seed(seed)
        order.set_epoch(epoch)
        lrs = [m.lrs() for m in members]
        # Shift BN: the frozen body in train mode re-estimates BN statistics on the class-balanced
        # batches, as the MiSLAS reference (train_stage2.py at 0fc381e, lines 303-313: with shift_bn
        # the model, on Places only the added block, in train mode) and Kang et al.'s cRT/LWS
        # (classifier-balancing f162ade, run_networks.py ``train``: model.train() on every
        # network each epoch). The trunk (Places' pretrained part) stays in eval
        # mode (Network.train).
        backbone.train()
        backbone.body.train(shift_bn)
        for m in members:
            m.head.train()
        if stacked is not None:
            stacked.begin_epoch()
        stats = _loop(batches, step, width=len(members), device=device, channels_last=ref.channels_last,
                      mixup=Mixup(s2.mixup_alpha, seed) if s2.mixup else None)
        if stacked is not None:
            stacked.store()
        _check_finite(2, epoch, stats.losses, [m.trained() for m in members])
        with warnings.catch_warnings():  # stacked heads step without calling the members' optimizers
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            for m in members:
                m.scheduler.step()
        vals = evaluate_heads(backbone, [m.head for m in members], data, "val", cfgs, device)
        wall = time.perf_counter() - t0
        for m, (lr, clf_lr), loss, val in zip(members, lrs, stats.losses, vals):
            m.records.append(EpochRecord(stage=2, epoch=epoch, lr=lr, classifier_lr=clf_lr, train_loss=loss,
                                         val=val.summary(), wall_s=wall, steps=stats.steps))
        accs = [v.acc for v in vals]
        eces = [v.ece for v in vals]
        if len(members) == 1:
            summary = f"lr {lrs[0][0]:.4g} loss {stats.loss:.4f} val acc {accs[0]:.2f} ECE {eces[0]:.2f}"
        else:
            summary = (f"loss {min(stats.losses):.4f}..{max(stats.losses):.4f} val acc {min(accs):.2f}.."
                       f"{max(accs):.2f}")
        _log(progress, f"[{name}] epoch {epoch}/{s2.epochs} {summary} ({stats.steps} steps, {wall:.1f} s)")
        if ckpt is not None:
            checkpoint.save_atomic(
                {"kind": "stage2", "epoch": epoch, "members": [_member_state(m) for m in members],
                 "body_buffers": {k: v.detach().cpu().clone() for k, v in backbone.body.named_buffers()},
                 "config": checkpoint_config(ref), "configs": [checkpoint_config(c) for c in cfgs],
                 "data_fingerprint": data.fingerprint},
                ckpt,
            )
        if on_epoch is not None:
            for m in members:
                on_epoch(m.index, m.records[-1])
    finals = final_evaluation(backbone, [m.head for m in members], data, cfgs, device)
    results = []
    for m, final in zip(members, finals):
        net = Network(backbone.body, backbone.feature_dim, data.num_classes, trunk=backbone.trunk)
        net.classifier = m.head  # the member's head on the shared (frozen, maybe BN-shifted) backbone
        norms = classifier_weight_norms(effective_weight(m.head).detach().float().cpu())
        extras: dict[str, Any] = {"group_size": len(members), "group_index": m.index, "shift_bn": shift_bn,
                                  "steps_per_epoch": math.ceil(len(order) / s2.batch_size)}
        if isinstance(m.loss_fn, LabelAwareSmoothing):
            extras["epsilon"] = m.loss_fn.epsilon.detach().cpu().numpy()
            extras["las_target"] = m.cfg.stage2.las_target
        results.append(StageResult(net, final.val, final.test, m.records, norms, extras, final.temperature,
                                   final.val_ts, final.test_ts))
    return results


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
        return _finish(copy.deepcopy(stage1_model), data, cfg, device, [])
    if method == "tau_norm":
        return _tau_norm(copy.deepcopy(stage1_model), data, cfg, device, progress)
    forward: OnGroupEpoch | None = None
    if on_epoch is not None:
        callback = on_epoch

        def forward(_index: int, record: EpochRecord) -> None:
            callback(record)

    return train_stage2_group(data, stage1_model, [cfg], device=device, checkpoint_dir=checkpoint_dir,
                              on_epoch=forward, progress=progress, vectorize=False)[0]


def _tau_norm(model: Network, data: LTData, cfg: RunConfig, device: torch.device, progress: bool) -> StageResult:
    """τ-normalisation with τ chosen on the validation split (never on test)."""
    linear = model.classifier
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"tau_norm starts from a Stage-1 model with a linear classifier, got {type(linear).__name__}")
    feats, labels = predict(_Features(model), eval_batches(data, "val", cfg, device), device, cfg.channels_last)
    best_tau, best_acc = 0.0, -1.0
    for tau in cfg.stage2.tau_grid:
        head = TauNormClassifier(linear, tau).cpu()
        acc = float((head(feats).argmax(1) == labels).float().mean())
        if acc > best_acc + 1e-12:
            best_tau, best_acc = float(tau), acc
    _log(progress, f"[stage2] tau_norm: tau = {best_tau} (val acc {100 * best_acc:.2f} %)")
    model.classifier = TauNormClassifier(linear, best_tau)
    return _finish(model, data, cfg, device, [], {"tau": best_tau})


class _Features(nn.Module):
    """Adapter so :func:`predict` returns features instead of logits."""

    def __init__(self, model: Network) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

