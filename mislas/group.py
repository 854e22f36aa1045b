"""Stage-2 trials that share one backbone pass per batch.

Why: in Stage 2 the backbone is frozen, so its output on a batch does not depend on ε_1,
ε_K, p, the LAS form or target, the ΔW ratio or the learning rates. Trials with the same
seed, method, batch size, sampler runs and epochs draw the same batches (common random
numbers), and with shift BN their BN statistics evolve the same way too. Running such a group
on one backbone pass per batch (and one per validation / test batch), with each trial's own
classifier head, scale, optimizer, scheduler and loss, gives every trial the result it would
get alone (``tests/mislas/test_stage2_group_parity.py`` checks this against :func:`mislas.stages.train_stage2`) at
close to the cost of one trial, since the heads are tiny next to the backbone.

It is assembled from the very pieces ``train_stage2`` is made of (``_plan_stage2``, the
fast-path / DataLoader batches, the autocast rule), imported from :mod:`mislas.stages`, so the
two cannot drift apart. Not covered: per-trial checkpoints and resume (a group is re-run
whole), and methods with no Stage-2 training (``ce``, ``tau_norm``: nothing to share).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from mislas.config import RunConfig
from mislas.data import LTData
from mislas.las import LabelAwareSmoothing
from mislas.metrics import EvalResult, classifier_weight_norms, evaluate_logits
from mislas.models import Network, ScaledClassifier, effective_weight
from mislas.stages import (
    EpochRecord,
    StageResult,
    _autocast,
    _log,
    _lr_of,
    _plan_stage2,
    _sum_dtype,
    _Stage2Plan,
    _to_device,
    _train_loader,
    cosine_factor,
    epoch_seed,
    eval_batches,
)

GROUPABLE_METHODS = ("mislas", "crt", "lws")
OnGroupEpoch = Callable[[int, EpochRecord], None]


def _effective_shift_bn(cfg: RunConfig) -> bool:
    """Shift BN is MiSLAS's; cRT and LWS run the body in eval mode whatever the field says."""
    return cfg.stage2.shift_bn if cfg.stage2.method == "mislas" else False


# What makes two trials' backbone passes identical: (field name in errors, getter).
SHARED_FIELDS: tuple[tuple[str, Callable[[RunConfig], Any]], ...] = (
    ("stage2.method", lambda c: c.stage2.method),
    ("seed", lambda c: c.seed),
    ("stage2.batch_size", lambda c: c.stage2.batch_size),
    ("stage2.samples_per_class", lambda c: c.stage2.samples_per_class),
    ("stage2.shift_bn", _effective_shift_bn),
    ("stage2.epochs", lambda c: c.stage2.epochs),
    ("channels_last", lambda c: c.channels_last),
    ("data.loader", lambda c: c.data.loader),
    ("eval.batch_size", lambda c: c.eval.batch_size),
)


def check_group(cfgs: Sequence[RunConfig]) -> None:
    """Raise ValueError unless ``cfgs`` can share one backbone pass (naming the first differing field)."""
    if not cfgs:
        raise ValueError("a Stage-2 group needs at least one config, got none")
    for name, get in SHARED_FIELDS:
        values = [get(c) for c in cfgs]
        if any(v != values[0] for v in values[1:]):
            shown = sorted({repr(v) for v in values})
            raise ValueError(f"all configs of a Stage-2 group must share {name}, got {', '.join(shown)}")
    method = cfgs[0].stage2.method
    if method not in GROUPABLE_METHODS:
        raise ValueError(f"stage2.method must be one of {', '.join(GROUPABLE_METHODS)} to share a backbone pass "
                         f"(the others train nothing), got {method!r}")


class _Trial:
    """One member of a group: a Network sharing the group's body, its head, optimizer and loss."""

    def __init__(self, index: int, cfg: RunConfig, backbone: Network, data: LTData) -> None:
        self.index, self.cfg = index, cfg
        s2 = cfg.stage2
        # The Network shares body (and trunk) modules with the group's backbone; only the
        # classifier is the trial's own, starting from Stage 1's.
        self.net = Network(backbone.body, backbone.feature_dim, data.num_classes, trunk=backbone.trunk)
        self.net.classifier = copy.deepcopy(backbone.classifier)
        self.plan: _Stage2Plan = _plan_stage2(self.net, data, cfg)
        self.optimizer = torch.optim.SGD(self.plan.param_groups, lr=s2.lr, momentum=s2.momentum,
                                         weight_decay=s2.weight_decay)
        epochs = max(s2.epochs, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: cosine_factor(step, epochs))
        self.records: list[EpochRecord] = []

    @property
    def head(self) -> nn.Module:
        return self.net.classifier

    def lrs(self) -> tuple[float, float]:
        """(lr, classifier lr) as train_stage2 records them."""
        lr, clf_lr = _lr_of(self.optimizer, "scale"), _lr_of(self.optimizer, "classifier")
        return (clf_lr if math.isnan(lr) else lr), clf_lr


def _head_tensors(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(W, b, scale or None) of a Stage-2 head: ScaledClassifier (MiSLAS, LWS) or Linear (cRT)."""
    if isinstance(head, ScaledClassifier):
        return head.linear.weight, head.linear.bias, head.scale
    if isinstance(head, nn.Linear):
        return head.weight, head.bias, None
    raise TypeError(f"a Stage-2 head is a ScaledClassifier or Linear, got {type(head).__name__}")


class StackedHeads:
    """All trials' heads as stacked tensors: one batched matmul, one vmapped loss, one SGD update.

    Why: G small heads cost G × (about 30 tiny kernels) per batch, which dominates once the
    backbone pass is shared (on a GPU each launch costs more than the head's arithmetic; on
    a busy CPU each small op can stall on a descheduled thread). Stacked, the cost no longer
    grows with G in op count. The math is each trial's own: logits = (x Wᵀ + b) ⊙ s, the
    trial's loss module applied through ``torch.func.vmap`` (its ε as the batched buffer),
    and SGD as ``torch.optim.SGD`` does it (d = g + wd·p; buf = m·buf + d; p −= lr·buf, with
    buf starting at 0, which equals SGD's first-step copy) with each trial's own lr, momentum
    and weight decay. Learning rates are read from the trials' own optimizers, whose
    schedulers step per epoch, so the schedule is theirs too. Agreement with the per-trial
    loop is to float rounding (the matmul is batched), checked in ``tests/mislas/test_stage2_group_parity.py``.
    """

    def __init__(self, trials: list[_Trial]) -> None:
        self.trials = trials
        parts = [_head_tensors(t.head) for t in trials]
        method = trials[0].cfg.stage2.method
        self.train_weight = method in ("mislas", "crt")
        self.train_scale = method in ("mislas", "lws")
        w = torch.stack([p[0].detach() for p in parts]).clone()
        b = torch.stack([p[1].detach() for p in parts]).clone()
        s = torch.stack([p[2].detach() if p[2] is not None else torch.ones_like(p[1]) for p in parts]).clone()
        self.params = {"weight": w.requires_grad_(self.train_weight), "bias": b.requires_grad_(self.train_weight),
                       "scale": s.requires_grad_(self.train_scale)}
        self.bufs = {k: torch.zeros_like(v) for k, v in self.params.items() if v.requires_grad}
        device = w.device
        groups = [t.optimizer.param_groups for t in trials]
        for gs in groups:
            for g in gs:
                if g["dampening"] != 0 or g["nesterov"] or g["maximize"]:
                    raise ValueError("StackedHeads implements SGD without dampening, nesterov or maximize")
        self.momentum = torch.tensor([gs[0]["momentum"] for gs in groups], device=device)
        self.weight_decay = torch.tensor([gs[0]["weight_decay"] for gs in groups], device=device)
        # the loss: one vmapped call per distinct loss type (e.g. LAS "paper" and "reference")
        self.losses: list[tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = []
        kinds: dict[Any, list[int]] = {}
        for i, t in enumerate(trials):
            fn = t.plan.loss_fn
            key = ("las", fn.target) if isinstance(fn, LabelAwareSmoothing) else type(fn)
            kinds.setdefault(key, []).append(i)
        order = []
        for key, idx in kinds.items():
            order.extend(idx)
            module = trials[idx[0]].plan.loss_fn
            index = torch.tensor(idx, device=device)
            if isinstance(module, LabelAwareSmoothing):
                eps = torch.stack([trials[i].plan.loss_fn.epsilon for i in idx])  # type: ignore[union-attr]

                def las(logits: torch.Tensor, y: torch.Tensor, module: nn.Module = module,
                        eps: torch.Tensor = eps) -> torch.Tensor:
                    return vmap(lambda e, lg: functional_call(module, {"epsilon": e}, (lg, y)))(eps, logits)

                self.losses.append((index, las))
            else:
                def plain(logits: torch.Tensor, y: torch.Tensor, module: nn.Module = module) -> torch.Tensor:
                    return vmap(lambda lg: module(lg, y))(logits)

                self.losses.append((index, plain))
        self.inverse = torch.argsort(torch.tensor(order, device=device))

    def loss(self, feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each trial's loss on the batch, [G]."""
        p = self.params
        g = p["weight"].shape[0]
        logits = torch.baddbmm(p["bias"].unsqueeze(1), feats.unsqueeze(0).expand(g, -1, -1),
                               p["weight"].transpose(1, 2)) * p["scale"].unsqueeze(1)
        logits = logits.float()
        parts = [fn(logits.index_select(0, index), y) for index, fn in self.losses]
        return torch.cat(parts).index_select(0, self.inverse)

    def _lr(self, name: str) -> torch.Tensor:
        group = "scale" if name == "scale" else "classifier"
        lrs = []
        for t in self.trials:
            found = [g["lr"] for g in t.optimizer.param_groups if g.get("name") == group]
            lrs.append(found[0] if found else 0.0)
        return torch.tensor(lrs, device=self.params[name].device)

    @torch.no_grad()
    def step(self, lrs: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            if not p.requires_grad or p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            d = p.grad + self.weight_decay.view(shape) * p
            buf = self.bufs[name]
            buf.mul_(self.momentum.view(shape)).add_(d)
            p.sub_(lrs[name].view(shape) * buf)
            p.grad = None

    def epoch_lrs(self) -> dict[str, torch.Tensor]:
        """This epoch's per-trial learning rates, from the trials' own (scheduled) optimizers."""
        return {name: self._lr(name) for name, p in self.params.items() if p.requires_grad}

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked values into each trial's own head module (for eval and the results)."""
        for i, t in enumerate(self.trials):
            w, b, s = _head_tensors(t.head)
            w.copy_(self.params["weight"][i])
            b.copy_(self.params["bias"][i])
            if s is not None:
                s.copy_(self.params["scale"][i])


def _train_epoch(backbone: Network, trials: list[_Trial], batches: Any, *, device: torch.device,
                 shift_bn: bool, channels_last: bool, stacked: StackedHeads | None = None) -> list[float]:
    """One epoch: per batch one backbone forward, then every trial's head step; mean losses."""
    backbone.train()
    backbone.body.train(shift_bn)
    for t in trials:
        t.head.train()
    totals = torch.zeros(len(trials), dtype=_sum_dtype(device), device=device)
    count = 0
    lrs = stacked.epoch_lrs() if stacked is not None else {}
    for x, y in batches:
        x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with _autocast(device), torch.no_grad():
            feats = backbone.features(x)
        if stacked is not None:
            with _autocast(device):
                losses = stacked.loss(feats.float(), y)
            losses.sum().backward()  # trial g's parameters get the gradient of its own loss only
            stacked.step(lrs)
            batch_losses = losses.detach()
        else:
            per_trial = []
            for t in trials:  # the same ops, in the same autocast, as mislas.stages.run_epoch
                with _autocast(device):
                    loss = t.plan.loss_fn(t.head(feats.float()).float(), y)
                t.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t.optimizer.step()
                per_trial.append(loss.detach())
            batch_losses = torch.stack(per_trial)
        # summed on the device as run_epoch does: no host sync per batch
        totals += batch_losses.to(totals.dtype) * y.shape[0]
        count += y.shape[0]
    if stacked is not None:
        stacked.write_back()
    return (totals / max(count, 1)).tolist()


@torch.no_grad()
def predict_group(backbone: Network, heads: Sequence[nn.Module], batches: Any, device: torch.device,
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
    logits = torch.cat(per_batch, 1) if per_batch else torch.zeros(len(heads), 0, 0)
    return list(logits.unbind(0)), torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)


def _evaluate_group(backbone: Network, trials: list[_Trial], data: LTData, split: str,
                    device: torch.device) -> list[EvalResult]:
    ref = trials[0].cfg
    logits, labels = predict_group(backbone, [t.head for t in trials], eval_batches(data, split, ref, device),
                                   device, ref.channels_last)
    out = []
    for t, lg in zip(trials, logits):
        e = t.cfg.eval
        out.append(evaluate_logits(lg, labels, data.class_counts, n_bins=e.n_bins, many_above=e.many_above,
                                   few_below=e.few_below, index_ranges=e.index_ranges))
    return out


def train_stage2_group(
    data: LTData,
    stage1_model: Network,
    cfgs: Sequence[RunConfig],
    *,
    device: torch.device,
    on_epoch: OnGroupEpoch | None = None,
    progress: bool = True,
    vectorize: bool = True,
) -> list[StageResult]:
    """Train every config of ``cfgs`` as :func:`mislas.stages.train_stage2` would, on one shared backbone pass.

    ``cfgs`` must agree on :data:`SHARED_FIELDS` (ValueError naming the field otherwise); they
    may differ in everything else of Stage 2 (ε_1, ε_K, form, p, LAS target, ΔW ratio, lr,
    weight decay, momentum) and in the eval thresholds. ``on_epoch(i, record)`` is called for
    trial ``i`` after every epoch, in trial order; ``record.wall_s`` is the group's elapsed
    time. Returns one :class:`StageResult` per config, in order; their models share one
    (frozen) body, whose BN statistics ended where each trial's would have ended alone.
    ``vectorize`` trains the heads stacked (:class:`StackedHeads`, agreement to float
    rounding); ``False`` steps each trial's own head and optimizer in turn, op for op as
    ``train_stage2`` does.
    """
    cfgs = list(cfgs)
    check_group(cfgs)
    ref = cfgs[0]
    s2 = ref.stage2
    backbone = copy.deepcopy(stage1_model)
    trials = [_Trial(i, cfg, backbone, data) for i, cfg in enumerate(cfgs)]
    shift_bn = trials[0].plan.shift_bn
    stacked = StackedHeads(trials) if vectorize else None
    generator = torch.Generator()
    batches = _train_loader(data, ref, sampler="class_aware", batch_size=s2.batch_size, generator=generator,
                            samples_per_class=s2.samples_per_class, device=device)
    t0 = time.perf_counter()
    vals: list[EvalResult] | None = None
    for epoch in range(1, s2.epochs + 1):
        seed = epoch_seed(ref.seed, 2, epoch)
        generator.manual_seed(seed)
        torch.manual_seed(seed)
        lrs = [t.lrs() for t in trials]
        losses = _train_epoch(backbone, trials, batches, device=device, shift_bn=shift_bn,
                              channels_last=ref.channels_last, stacked=stacked)
        with warnings.catch_warnings():  # stacked heads step the trials' lrs without their optimizers
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            for t in trials:
                t.scheduler.step()
        vals = _evaluate_group(backbone, trials, data, "val", device)
        wall = time.perf_counter() - t0
        for t, (lr, clf_lr), loss, val in zip(trials, lrs, losses, vals):
            t.records.append(EpochRecord(2, epoch, lr, clf_lr, loss, val.summary(), wall))
        accs = [v.summary()["acc"] for v in vals]
        _log(progress, f"[stage2 group of {len(trials)} {s2.method}] epoch {epoch}/{s2.epochs} loss "
                       f"{min(losses):.4f}..{max(losses):.4f} val acc {min(accs):.2f}..{max(accs):.2f} ({wall:.1f} s)")
        if on_epoch is not None:
            for t in trials:
                on_epoch(t.index, t.records[-1])
    if vals is None:
        vals = _evaluate_group(backbone, trials, data, "val", device)
    tests = _evaluate_group(backbone, trials, data, "test", device)
    results = []
    for t, val, test in zip(trials, vals, tests):
        norms = classifier_weight_norms(effective_weight(t.head).detach().float().cpu())
        extras: dict[str, Any] = {"group_size": len(trials), "group_index": t.index}
        if isinstance(t.plan.loss_fn, LabelAwareSmoothing):
            extras["epsilon"] = t.plan.loss_fn.epsilon.detach().cpu().numpy()
            extras["las_target"] = t.cfg.stage2.las_target
        results.append(StageResult(t.net, val, test, t.records, norms, extras))
    return results
