"""Stage 1 and Stage 2 as one epoch loop, parameterised by criterion, sampler and what trains.

Stage 1 trains the whole network with cross-entropy on mixup pairs and instance-balanced
sampling. Stage 2 freezes the backbone and retrains the classifier with class-balanced
sampling: MiSLAS (LAS, shift BN, per-class scale, ΔW learning-rate ratio) or a baseline
(cRT, LWS, τ-norm; CE is Stage 1 alone). Every random component owns a generator seeded
from (seed, stage, epoch), so an interrupted run resumed at its last finished epoch draws
the same data order as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mislas import checkpoint, fastpath
from mislas.config import RunConfig, Stage1Config
from mislas.errors import UsageError
from mislas.data import LTData, eval_transform, make_loader, train_transform
from mislas.data.loaders import SamplerName
from mislas.las import LabelAwareSmoothing
from mislas.metrics import EvalResult, classifier_weight_norms, evaluate_logits
from mislas.models import Network, ScaledClassifier, TauNormClassifier, build_model, effective_weight

OnEpoch = Callable[["EpochRecord"], None]


@dataclass(frozen=True)
class EpochRecord:
    """What one finished epoch reports: to the console, to checkpoints, to Ray Tune."""

    stage: int
    epoch: int
    lr: float
    classifier_lr: float
    train_loss: float
    val: dict[str, float | None]
    wall_s: float


@dataclass
class StageResult:
    """A trained model with its validation and test evaluation."""

    model: Network
    val: EvalResult
    test: EvalResult
    epochs: list[EpochRecord] = field(default_factory=list)
    weight_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    extras: dict[str, Any] = field(default_factory=dict)


# --- small pieces ---------------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (run seed, stage, epoch)."""
    return (seed * 1_000_003 + stage * 10_007 + epoch) % (2**63 - 1)


def stage1_lr_factor(cfg: Stage1Config, epoch: int) -> float:
    """Learning-rate factor of 1-based ``epoch``: warm-up + multistep (CIFAR) or cosine."""
    if cfg.schedule == "cosine":
        return cosine_factor(epoch - 1, cfg.epochs)
    if epoch <= cfg.warmup_epochs:
        return epoch / cfg.warmup_epochs
    return 0.1 ** sum(epoch > m for m in cfg.milestones)


def cosine_factor(step: int, total: int) -> float:
    """½(1 + cos(π·e/E)) for 0-based epoch e: lr at the start of each of E epochs."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


class Mixup:
    """Batch mixup: x = λx_i + (1−λ)x_j, λ ~ Beta(α, α), j a permutation of the batch.

    Hand-written rather than ``torchvision.transforms.v2.MixUp`` because it owns its
    generator (reproducible, resumable) and returns both label sets for the λ-weighted loss.
    """

    def __init__(self, alpha: float, seed: int) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = alpha
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

def run_epoch(
    model: Network,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    train_backbone: bool,
    backbone_bn_train: bool,
    mixup: Mixup | None = None,
    channels_last: bool = False,
) -> float:
    """One pass over ``batches``; returns the mean training loss.

    ``train_backbone`` lets gradients reach the body (Stage 1); otherwise the features are
    computed without gradient and only the classifier learns. ``backbone_bn_train`` runs the
    body in train mode, which is what shift learning on BN means in Stage 2.
    """
    model.train()
    model.body.train(backbone_bn_train)
    # Summed on the device, without a host sync per batch; float64 gives the same sum as Python floats.
    total, count = torch.zeros((), dtype=_sum_dtype(device), device=device), 0
    for x, y in batches:
        x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with _autocast(device):
            if mixup is not None:
                x, y_a, y_b, lam = mixup(x, y)
            if train_backbone:
                feats = model.features(x)
            else:
                with torch.no_grad():
                    feats = model.features(x)
            logits = model.classifier(feats.float() if not train_backbone else feats).float()
            if mixup is not None:
                loss = lam * loss_fn(logits, y_a) + (1.0 - lam) * loss_fn(logits, y_b)
            else:
                loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().to(total.dtype) * y.shape[0]
        count += y.shape[0]
    return float(total) / max(count, 1)


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole eval split, on the CPU, in float32."""
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        with _autocast(device):
            logits.append(model(_to_device(x, device, channels_last)).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def eval_batches(data: LTData, split: str, cfg: RunConfig,
                 device: torch.device | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential eval batches: on ``device`` via the fast path when ``cfg.data.loader`` selects it."""
    if device is not None and fastpath.selected(getattr(data, split), cfg.data.loader):
        return fastpath.eval_batches(data, split, device=device, batch_size=cfg.eval.batch_size,
                                     channels_last=cfg.channels_last)
    return make_loader(
        getattr(data, split), eval_transform(data), batch_size=cfg.eval.batch_size, sampler="sequential",
        num_classes=data.num_classes, generator=torch.Generator().manual_seed(0), num_workers=cfg.data.num_workers,
    )


def evaluate_split(model: Network, data: LTData, split: str, cfg: RunConfig, device: torch.device) -> EvalResult:
    """Top-1 (All/Many/Medium/Few), ECE, MCE, NLL and reliability bins on ``split``."""
    logits, labels = predict(model, eval_batches(data, split, cfg, device), device, cfg.channels_last)
    return evaluate_logits(
        logits, labels, data.class_counts, n_bins=cfg.eval.n_bins, many_above=cfg.eval.many_above,
        few_below=cfg.eval.few_below, index_ranges=cfg.eval.index_ranges,
    )


def _finish(model: Network, data: LTData, cfg: RunConfig, device: torch.device, records: list[EpochRecord],
            extras: dict[str, Any] | None = None, val: EvalResult | None = None) -> StageResult:
    val = val or evaluate_split(model, data, "val", cfg, device)
    test = evaluate_split(model, data, "test", cfg, device)
    norms = classifier_weight_norms(effective_weight(model.classifier).detach().float().cpu())
    return StageResult(model, val, test, records, norms, extras or {})


def _train_loader(data: LTData, cfg: RunConfig, *, sampler: SamplerName, batch_size: int,
                  generator: torch.Generator, samples_per_class: int = 4,
                  device: torch.device | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches: device-resident (:mod:`mislas.fastpath`) when selected, else a DataLoader.

    Either way each epoch's order and augmentation come from ``generator``, reseeded per epoch.
    """
    if device is not None and fastpath.selected(data.train, cfg.data.loader):
        return fastpath.train_batches(data, device=device, sampler=sampler, batch_size=batch_size,
                                      generator=generator, samples_per_class=samples_per_class,
                                      channels_last=cfg.channels_last)
    return make_loader(
        data.train, train_transform(data), batch_size=batch_size, sampler=sampler, num_classes=data.num_classes,
        generator=generator, num_workers=cfg.data.num_workers, samples_per_class=samples_per_class,
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


def train_stage1(
    data: LTData,
    cfg: RunConfig,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    on_epoch: OnEpoch | None = None,
    progress: bool = True,
) -> StageResult:
    """Train (or resume, or reuse) Stage 1; ``checkpoint_dir/stage1.pt`` when finished."""
    s1 = cfg.stage1
    final = Path(checkpoint_dir) / "stage1.pt" if checkpoint_dir else None
    partial = Path(checkpoint_dir) / "stage1.partial.pt" if checkpoint_dir else None
    if final is not None and final.exists():
        _log(progress, f"[stage1] reusing {final}")
        model = load_stage1(final, data, cfg, device)
        return _finish(model, data, cfg, device, [], {"reused": str(final)})

    torch.manual_seed(epoch_seed(cfg.seed, 1, 0))  # the initial weights are part of the run's seed
    model = new_model(data, cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=s1.lr, momentum=s1.momentum, weight_decay=s1.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: stage1_lr_factor(s1, step + 1))
    records: list[EpochRecord] = []
    start = 1
    if partial is not None and partial.exists():
        state = checkpoint.load(partial)
        checkpoint.check_compatible(state, partial, fingerprint=data.fingerprint, stage1=asdict(s1))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        records = [EpochRecord(**r) for r in state["records"]]
        start = state["epoch"] + 1
        _log(progress, f"[stage1] resuming after epoch {state['epoch']} from {partial}")

    generator = torch.Generator()
    batches = _train_loader(data, cfg, sampler="instance", batch_size=s1.batch_size, generator=generator,
                            device=device)
    t0 = time.perf_counter() - (records[-1].wall_s if records else 0.0)
    for epoch in range(start, s1.epochs + 1):
        seed = epoch_seed(cfg.seed, 1, epoch)
        generator.manual_seed(seed)
        torch.manual_seed(seed)
        lr = optimizer.param_groups[0]["lr"]
        loss = run_epoch(
            model, batches, loss_fn=nn.functional.cross_entropy, optimizer=optimizer, device=device,
            train_backbone=True, backbone_bn_train=True,
            mixup=Mixup(s1.mixup_alpha, seed) if s1.mixup else None, channels_last=cfg.channels_last,
        )
        scheduler.step()
        record = EpochRecord(1, epoch, lr, lr, loss, {}, time.perf_counter() - t0)
        records.append(record)
        _log(progress, f"[stage1] epoch {epoch}/{s1.epochs} lr {lr:.4g} loss {loss:.4f} ({record.wall_s:.1f} s)")
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
    return _finish(model, data, cfg, device, records)


# --- Stage 2 --------------------------------------------------------------------------------

@dataclass
class _Stage2Plan:
    """What a Stage-2 method trains, with which loss, and at which learning rates."""

    loss_fn: nn.Module
    param_groups: list[dict[str, Any]]
    shift_bn: bool


def _plan_stage2(model: Network, data: LTData, cfg: RunConfig) -> _Stage2Plan:
    s2 = cfg.stage2
    old = model.classifier
    if not isinstance(old, nn.Linear):
        raise ValueError(f"Stage 2 starts from a Stage-1 model with a linear classifier, got {type(old).__name__}")
    if model.trunk is not None:
        model.trunk.requires_grad_(False)
    model.body.requires_grad_(False)
    if s2.method == "mislas":
        head = ScaledClassifier(old, train_weight=True, train_scale=True)
        loss_fn: nn.Module = LabelAwareSmoothing(
            data.class_counts, s2.eps_1, s2.eps_k, form=s2.form, p=s2.p, target=s2.las_target
        )
        groups = [
            {"params": list(head.linear.parameters()), "lr": s2.lr * s2.dw_ratio, "name": "classifier"},
            {"params": [head.scale], "lr": s2.lr, "name": "scale"},
        ]
        shift_bn = s2.shift_bn
    elif s2.method == "crt":
        torch.manual_seed(epoch_seed(cfg.seed, 2, 0))  # the re-initialisation is part of the run's seed
        old.reset_parameters()
        head = old
        head.requires_grad_(True)
        loss_fn = nn.CrossEntropyLoss()
        groups = [{"params": list(head.parameters()), "lr": s2.lr, "name": "classifier"}]
        shift_bn = False
    elif s2.method == "lws":
        head = ScaledClassifier(old, train_weight=False, train_scale=True)
        loss_fn = nn.CrossEntropyLoss()
        groups = [{"params": [head.scale], "lr": s2.lr, "name": "scale"}]
        shift_bn = False
    else:
        raise ValueError(f"method {s2.method!r} has no Stage-2 training")
    model.classifier = head
    return _Stage2Plan(loss_fn.to(old.weight.device), groups, shift_bn)


def _lr_of(optimizer: torch.optim.Optimizer, name: str) -> float:
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return float(group["lr"])
    return float("nan")


def _stage2_state(model: Network) -> dict[str, Any]:
    """What Stage 2 changes: the classifier and the body's BN buffers (shift learning)."""
    return {"classifier": model.classifier.state_dict(),
            "body_buffers": {k: v.detach().cpu().clone() for k, v in model.body.named_buffers()}}


def _load_stage2_state(model: Network, state: dict[str, Any]) -> None:
    model.classifier.load_state_dict(state["classifier"])
    buffers = dict(model.body.named_buffers())
    for name, value in state["body_buffers"].items():
        buffers[name].copy_(value)


def _tau_norm(model: Network, data: LTData, cfg: RunConfig, device: torch.device, progress: bool) -> StageResult:
    """τ-normalisation with τ chosen on the validation split (never on test)."""
    linear = model.classifier
    assert isinstance(linear, nn.Linear)
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
    """Retrain the classifier of a copy of ``stage1_model`` by ``cfg.stage2.method``.

    Resumes from ``checkpoint_dir/stage2.pt`` at its last finished epoch; ``on_epoch`` gets
    the validation metrics after every epoch (what a scheduler such as ASHA acts on).
    """
    s2 = cfg.stage2
    model = copy.deepcopy(stage1_model)
    if s2.method == "ce":
        return _finish(model, data, cfg, device, [])
    if s2.method == "tau_norm":
        return _tau_norm(model, data, cfg, device, progress)

    plan = _plan_stage2(model, data, cfg)
    optimizer = torch.optim.SGD(plan.param_groups, lr=s2.lr, momentum=s2.momentum, weight_decay=s2.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, max(s2.epochs, 1)))
    ckpt = Path(checkpoint_dir) / "stage2.pt" if checkpoint_dir else None
    records: list[EpochRecord] = []
    start = 1
    if ckpt is not None and ckpt.exists():
        state = checkpoint.load(ckpt)
        checkpoint.check_compatible(state, ckpt, fingerprint=data.fingerprint, stage1=asdict(cfg.stage1))
        saved, now = state["config"], checkpoint_config(cfg)
        if (saved["stage2"], saved["seed"]) != (now["stage2"], now["seed"]):
            raise UsageError(f"checkpoint {ckpt} belongs to another Stage-2 config")
        _load_stage2_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        records = [EpochRecord(**r) for r in state["records"]]
        start = state["epoch"] + 1
        _log(progress, f"[stage2] resuming after epoch {state['epoch']} from {ckpt}")

    generator = torch.Generator()
    batches = _train_loader(data, cfg, sampler="class_aware", batch_size=s2.batch_size, generator=generator,
                            samples_per_class=s2.samples_per_class, device=device)
    t0 = time.perf_counter() - (records[-1].wall_s if records else 0.0)
    val: EvalResult | None = None
    for epoch in range(start, s2.epochs + 1):
        seed = epoch_seed(cfg.seed, 2, epoch)
        generator.manual_seed(seed)
        torch.manual_seed(seed)
        lr, clf_lr = _lr_of(optimizer, "scale"), _lr_of(optimizer, "classifier")
        lr = clf_lr if math.isnan(lr) else lr
        loss = run_epoch(
            model, batches, loss_fn=plan.loss_fn, optimizer=optimizer, device=device, train_backbone=False,
            backbone_bn_train=plan.shift_bn, channels_last=cfg.channels_last,
        )
        scheduler.step()
        val = evaluate_split(model, data, "val", cfg, device)
        record = EpochRecord(2, epoch, lr, clf_lr, loss, val.summary(), time.perf_counter() - t0)
        records.append(record)
        summary = val.summary()
        _log(progress, f"[stage2 {s2.method}] epoch {epoch}/{s2.epochs} lr {lr:.4g} loss {loss:.4f} "
                       f"val acc {summary['acc']:.2f} ECE {summary['ece']:.2f} ({record.wall_s:.1f} s)")
        if ckpt is not None:
            checkpoint.save_atomic(
                {"kind": "stage2", "epoch": epoch, "model": _stage2_state(model), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "records": [asdict(r) for r in records],
                 "config": checkpoint_config(cfg), "data_fingerprint": data.fingerprint},
                ckpt,
            )
        if on_epoch is not None:
            on_epoch(record)
    extras: dict[str, Any] = {}
    if isinstance(plan.loss_fn, LabelAwareSmoothing):
        extras["epsilon"] = plan.loss_fn.epsilon.detach().cpu().numpy()
        extras["las_target"] = s2.las_target
    return _finish(model, data, cfg, device, records, extras, val if start <= s2.epochs else None)


def checkpoint_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as stored in checkpoints (tuples as lists, so comparisons after loading hold)."""
    raw = cfg.to_dict()
    return {k: ({kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} if isinstance(v, dict) else v)
            for k, v in raw.items()}
