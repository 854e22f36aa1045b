"""The path comparisons of the GPU check: each pair of code paths that must agree, on one device.

Used by ``tests/gpu/test_cuda_paths.py`` (pytest, marked ``cuda``) and by
``benchmarks.gpu_check`` step b (plain calls, so a machine without pytest runs the same
comparisons). Each check returns a :class:`Check`: passed or not, the tolerance it was held
to, and the measured differences, so a failure on a GPU says by how much.

The five pairs (issue 19): the device-resident fast path vs the DataLoader, stacked Stage-2
heads vs heads stepped one by one, bf16 autocast vs fp32, a Stage-1 run resumed after its
first epoch vs an uninterrupted one, evaluation on the device vs on the CPU.

Tolerances. fp32 paths that differ only in kernel choice (or not at all): rtol 1e-5 /
atol 1e-6 on the CPU (as the CPU tests), rtol 1e-4 / atol 1e-5 on CUDA (other reduction
orders; cuDNN is set deterministic during the checks, so run-to-run noise is not in it).
bf16 against fp32: bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2 % per op), and
through ResNet-32's 31 layers the logits move by about 1-3 %: the bound is a relative L2
error of 5 % on logits and 2 % on the loss, a gradient cosine similarity of at least 0.9
(measured with CPU bf16 autocast, 2026-12-06: 0.944 at TINY, 0.970 at FULL; the worst tensors
are BatchNorm's weight and bias gradients, sums that cancel, at 0.80-0.91), and 5 % on a short
Stage 1's first-epoch loss (later epochs drift apart as any two SGD
trajectories do, so they are reported, not bounded). Two bf16 paths with different GEMM kernels (stacked vs one by one): the trained
update differs by at most 5 % of its norm.

A check on ``cpu`` runs the same code; "bf16" there is CPU autocast (``torch.autocast("cpu")``),
so the dry mode exercises the loose tolerances too.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mislas import device as dev
from mislas import fastpath, stages
from mislas.config import DataConfig, EvalConfig, RunConfig, Stage1Config, Stage2Config
from mislas.data import ArraySplit, LTData, batches, eval_transform, make_loader
from mislas.metrics import evaluate_logits
from mislas.models import Network


@dataclass(frozen=True)
class Sizes:
    """How big the comparisons run: class counts, eval images per class, image side, batch, epochs, group."""

    counts: tuple[int, ...]
    eval_per_class: int
    image_size: int
    batch: int
    s1_epochs: int
    s2_epochs: int
    group: int

    def train_images(self) -> int:
        return sum(self.counts)


TINY = Sizes(counts=(40, 20, 8), eval_per_class=8, image_size=12, batch=16, s1_epochs=2, s2_epochs=2, group=3)
# On a GPU: CIFAR-sized images, batch 128 (Table 6), 4 classes, 9 steps an epoch; Stage 1 of 36
# steps (16 at batch 128 leave BatchNorm's running statistics behind: study/settings.py)
FULL = Sizes(counts=(600, 300, 150, 75), eval_per_class=64, image_size=32, batch=128, s1_epochs=4, s2_epochs=2,
             group=8)


@dataclass
class Check:
    """One comparison's outcome: passed, the tolerance held to, what was measured."""

    name: str
    passed: bool
    tolerance: str
    measured: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- set-up -------------------------------------------------------------------------------

def _blob_split(means: torch.Tensor, counts: list[int], gen: torch.Generator) -> ArraySplit:
    """Class-dependent blobs (``means`` [K, H, W, 3]) plus noise: a net learns them in a few
    steps, so evaluation is not at chance; every image distinct."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    noise = torch.rand(len(labels), *means.shape[1:], generator=gen) * 55
    return ArraySplit((means[labels] + noise).to(torch.uint8), labels)


def parity_data(sizes: Sizes, seed: int = 0) -> LTData:
    """Long-tailed blobs of ``sizes``; val and test balanced, with the training set's class means."""
    gen = torch.Generator().manual_seed(seed)
    k, s = len(sizes.counts), sizes.image_size
    means = torch.rand(k, s, s, 3, generator=gen) * 200
    train = _blob_split(means, list(sizes.counts), gen)
    val = _blob_split(means, [sizes.eval_per_class] * k, gen)
    test = _blob_split(means, [sizes.eval_per_class] * k, gen)
    return LTData(name="parity", num_classes=k, train=train, val=val, test=test, class_counts=sizes.counts,
                  image_size=s, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, fingerprint=f"{seed:064d}")


def parity_config(sizes: Sizes, device: torch.device, loader: str = "auto") -> RunConfig:
    """A short two-stage run: ResNet-32, mixup Stage 1 with warm-up, MiSLAS Stage 2 (LAS, shift BN)."""
    return RunConfig(
        data=DataConfig(loader=loader, num_workers=0),  # type: ignore[arg-type]
        stage1=Stage1Config(arch="resnet32", epochs=sizes.s1_epochs, lr=0.05, batch_size=sizes.batch,
                            warmup_epochs=1, milestones=()),
        stage2=Stage2Config(epochs=sizes.s2_epochs, lr=0.05, batch_size=sizes.batch, eps_1=0.3, eps_k=0.1,
                            dw_ratio=0.2, shift_bn=True),
        eval=EvalConfig(batch_size=max(sizes.batch, 64)),
        seed=0, device=device.type, channels_last=True,
    )


@contextlib.contextmanager
def precision(mode: str) -> Iterator[None]:
    """Training and evaluation in ``mode``: "bf16" (autocast, as CUDA runs by default), "fp32"
    (autocast off, also on CUDA) or "default" (the library's choice: bf16 on CUDA, fp32 on the CPU).

    Swaps :func:`mislas.device.autocast`, the one switch the stages use, for the duration.
    """
    if mode == "default":
        yield
        return
    if mode not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16, fp32 or default, got {mode!r}")
    old = dev.autocast
    dev.autocast = lambda device: torch.autocast(device.type, dtype=torch.bfloat16,  # type: ignore[assignment]
                                                 enabled=mode == "bf16")
    try:
        yield
    finally:
        dev.autocast = old  # type: ignore[assignment]


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """cuDNN's deterministic algorithms during a comparison: the paths' difference, not run-to-run noise."""
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


@contextlib.contextmanager
def no_augmentation() -> Iterator[None]:
    """Both data paths without crop/flip (the eval transform), so their batches can be equal."""
    old = (batches.train_transform, fastpath.train_augmentation)
    batches.train_transform = eval_transform  # type: ignore[assignment]
    fastpath.train_augmentation = lambda data: None  # type: ignore[assignment]
    try:
        yield
    finally:
        batches.train_transform, fastpath.train_augmentation = old  # type: ignore[assignment]


def fp_tolerance(device: torch.device) -> tuple[float, float]:
    """(rtol, atol) for fp32 paths that should agree up to kernel choice."""
    return (1e-4, 1e-5) if device.type == "cuda" else (1e-5, 1e-6)


def compare_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float,
                   atol: float) -> tuple[bool, float, str]:
    """allclose over every tensor of two state dicts; (ok, worst |a-b| - rtol|b| excess ratio, worst key)."""
    if a.keys() != b.keys():
        return False, math.inf, f"keys differ: {sorted(set(a) ^ set(b))[:3]}"
    worst, worst_key, ok = 0.0, "", True
    for k in a:
        x, y = a[k].detach().float().cpu(), b[k].detach().float().cpu()
        if x.shape != y.shape:
            return False, math.inf, f"{k}: shapes {tuple(x.shape)} vs {tuple(y.shape)}"
        diff = float((x - y).abs().max()) if x.numel() else 0.0
        ratio = float(((x - y).abs() / (atol + rtol * y.abs())).max()) if x.numel() else 0.0
        if ratio > worst:
            worst, worst_key = ratio, f"{k} (max |diff| {diff:.3g})"
        ok = ok and bool(torch.allclose(x, y, rtol=rtol, atol=atol))
    return ok, worst, worst_key


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64 on the CPU."""
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-30))


_STAGE1: dict[tuple[str, Sizes], Network] = {}


def stage1_model(device: torch.device, sizes: Sizes) -> Network:
    """A short Stage 1 on the parity data (cached per device and size): the shared start of Stage-2 checks."""
    key = (str(device), sizes)
    if key not in _STAGE1:
        data = parity_data(sizes)
        with deterministic(device):
            model, _ = stages.fit_stage1(data, parity_config(sizes, device), device=device, progress=False)
        _STAGE1[key] = model
    return _STAGE1[key]


def _timed(fn: Callable[[torch.device, Sizes], Check]) -> Callable[[torch.device, Sizes], Check]:
    def run(device: torch.device, sizes: Sizes) -> Check:
        t0 = time.perf_counter()
        out = fn(device, sizes)
        out.wall_s = round(time.perf_counter() - t0, 2)
        return out

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


# --- the five comparisons -------------------------------------------------------------------

@_timed
def fast_path_vs_dataloader(device: torch.device, sizes: Sizes) -> Check:
    """Eval batches built on the device equal the DataLoader's (eval transform); without augmentation a
    Stage 1 + MiSLAS Stage 2 through either path ends at the same model."""
    rtol, atol = fp_tolerance(device)
    data = parity_data(sizes)
    cfg = parity_config(sizes, device)
    fast = torch.cat([x.float().cpu() for x, _ in fastpath.eval_batches(data, "test", device=device,
                                                                          batch_size=cfg.eval.batch_size)])
    loader = make_loader(data.test, eval_transform(data), batch_size=cfg.eval.batch_size, sampler="sequential",
                         num_classes=data.num_classes, generator=torch.Generator().manual_seed(0), num_workers=0)
    ref = torch.cat([x.to(device).float().cpu() for x, _ in loader])
    batch_diff = float((fast - ref).abs().max())
    models: dict[str, tuple[Network, stages.StageResult, list[float]]] = {}
    with no_augmentation(), deterministic(device):
        for path in ("torch", "auto"):
            c = parity_config(sizes, device, loader=path)
            m, records = stages.fit_stage1(data, c, device=device, progress=False)
            s2 = stages.train_stage2(data, m, c, device=device, progress=False)
            models[path] = (m, s2, [r.train_loss for r in records])
    (m_t, s2_t, loss_t), (m_f, s2_f, loss_f) = models["torch"], models["auto"]
    ok1, worst1, key1 = compare_states(m_f.state_dict(), m_t.state_dict(), rtol, atol)
    ok2, worst2, key2 = compare_states(s2_f.model.classifier.state_dict(), s2_t.model.classifier.state_dict(),
                                       rtol, atol)
    loss_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(loss_f, loss_t))
    acc_diff = abs(s2_f.test.acc - s2_t.test.acc)
    passed = batch_diff <= 1e-6 and ok1 and ok2 and loss_rel <= 10 * rtol and acc_diff <= 100.0 / len(ref) + 1e-9
    return Check("fast path vs DataLoader", passed,
                 f"eval batches max |diff| <= 1e-6; models allclose rtol {rtol:g} atol {atol:g}; "
                 f"Stage-1 losses rel <= {10 * rtol:g}; test acc within one image",
                 {"eval_batch_max_abs_diff": batch_diff, "stage1_worst_tol_ratio": worst1,
                  "stage2_head_worst_tol_ratio": worst2, "stage1_loss_max_rel_diff": loss_rel,
                  "test_acc_diff_pp": acc_diff},
                 f"worst: stage 1 {key1}; stage 2 {key2}")


def _group_configs(sizes: Sizes, device: torch.device) -> list[RunConfig]:
    """G MiSLAS members that differ in what a study searches (ε_1, ε_K, form, ΔW ratio, lr)."""
    base = parity_config(sizes, device)
    forms = ("concave", "linear", "convex", "exp")
    out = []
    for i in range(sizes.group):
        form = forms[i % 4]
        out.append(replace(base, stage2=replace(
            base.stage2, eps_1=0.1 + 0.1 * (i % 4), eps_k=0.05 * (i % 3), form=form,  # type: ignore[arg-type]
            p=1.5 if form == "exp" else None, dw_ratio=(0.1, 0.2, 0.5)[i % 3], lr=(0.05, 0.1)[i % 2])))
    return out


@_timed
def stacked_vs_one_by_one(device: torch.device, sizes: Sizes) -> Check:
    """A Stage-2 group with stacked heads ends where the same group stepped head by head ends:
    in fp32 to float rounding; in bf16 (CUDA's default) within 5 % of each member's update."""
    data = parity_data(sizes)
    model = stage1_model(device, sizes)
    cfgs = _group_configs(sizes, device)
    rtol, atol = fp_tolerance(device)
    start = {k: v.detach().float().cpu() for k, v in model.classifier.state_dict().items()}
    measured: dict[str, Any] = {"group": len(cfgs)}
    passed, worst_desc = True, []
    for mode in ("fp32", "bf16"):
        with precision(mode), deterministic(device):
            runs = {vec: stages.train_stage2_group(data, model, cfgs, device=device, progress=False, vectorize=vec)
                    for vec in (True, False)}
        update_rel, loss_rel, worst = 0.0, 0.0, 0.0
        for a, b in zip(runs[True], runs[False]):
            sa, sb = a.model.classifier.state_dict(), b.model.classifier.state_dict()
            if mode == "fp32":
                ok, w, key = compare_states(sa, sb, rtol, atol)
                passed = passed and ok
                if w > worst:
                    worst = w
                    worst_desc.append(f"fp32 member {a.extras['group_index']}: {key}")
            for k in sa:  # ||Δa - Δb|| / ||Δb||, Δ = trained - Stage-1 head (the scale starts at 1)
                s0 = start["weight"] if k.endswith("weight") else start["bias"] if k.endswith("bias") else None
                base = s0 if s0 is not None else torch.ones_like(sb[k].float().cpu())
                db = sb[k].float().cpu() - base
                if float(db.norm()) > 0:
                    update_rel = max(update_rel, rel_l2(sa[k].float().cpu() - base, db))
            for ra, rb in zip(a.epochs, b.epochs):
                loss_rel = max(loss_rel, abs(ra.train_loss - rb.train_loss) / max(abs(rb.train_loss), 1e-12))
        measured[f"{mode}_update_max_rel_diff"] = update_rel
        measured[f"{mode}_loss_max_rel_diff"] = loss_rel
        if mode == "fp32":
            measured["fp32_worst_tol_ratio"] = worst
            passed = passed and loss_rel <= 10 * rtol
        else:
            passed = passed and update_rel <= 0.05 and loss_rel <= 0.02
    return Check("stacked heads vs one by one", passed,
                 f"fp32: heads allclose rtol {rtol:g} atol {atol:g}, losses rel <= {10 * rtol:g}; "
                 "bf16: update rel diff <= 0.05, losses rel <= 0.02",
                 measured, "; ".join(worst_desc[-1:]))


@_timed
def bf16_vs_fp32(device: torch.device, sizes: Sizes) -> Check:
    """ResNet-32's logits, loss and gradients under bf16 autocast against fp32, and a Stage-1 run's
    first-epoch loss: within the bf16 bounds of the module docstring."""
    data = parity_data(sizes)
    cfg = parity_config(sizes, device)
    torch.manual_seed(0)
    model = stages.new_model(data, cfg, device)
    x, y = next(iter(fastpath.train_batches(data, device=device, sampler="instance", batch_size=sizes.batch,
                                            generator=torch.Generator().manual_seed(0))))
    out: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for mode in ("fp32", "bf16"):
        m = copy.deepcopy(model).train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            logits = m(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        grads = torch.cat([p.grad.detach().float().flatten() for p in m.parameters() if p.grad is not None])
        out[mode] = (logits.detach().float(), loss.detach().float(), grads)
    logit_rel = rel_l2(out["bf16"][0], out["fp32"][0])
    loss_rel = rel_l2(out["bf16"][1], out["fp32"][1])
    g_b, g_f = out["bf16"][2].double().cpu(), out["fp32"][2].double().cpu()
    cosine = float(g_b @ g_f / (g_b.norm() * g_f.norm()).clamp_min(1e-30))
    losses = {}
    with deterministic(device):
        for mode in ("fp32", "bf16"):
            with precision(mode):
                _, records = stages.fit_stage1(data, cfg, device=device, progress=False)
            losses[mode] = [r.train_loss for r in records]
    # the first epoch only: later epochs start from weights the rounding already moved, and two
    # trajectories of SGD drift apart whatever the precision (reported, not held to a bound)
    epoch_rel = abs(losses["bf16"][0] - losses["fp32"][0]) / max(abs(losses["fp32"][0]), 1e-12)
    passed = logit_rel <= 0.05 and loss_rel <= 0.02 and cosine >= 0.9 and epoch_rel <= 0.05
    return Check("bf16 autocast vs fp32", passed,
                 "logits rel L2 <= 0.05, loss rel <= 0.02, gradient cosine >= 0.9, "
                 "first Stage-1 epoch's mean loss rel <= 0.05",
                 {"logits_rel_l2": logit_rel, "loss_rel": loss_rel, "grad_cosine": cosine,
                  "first_epoch_loss_rel_diff": epoch_rel, "epoch_losses_fp32": losses["fp32"],
                  "epoch_losses_bf16": losses["bf16"]})


@_timed
def stage1_resumed_vs_uninterrupted(device: torch.device, sizes: Sizes) -> Check:
    """A Stage 1 stopped after epoch 1 and resumed from its checkpoint ends where an uninterrupted one ends."""
    data = parity_data(sizes)
    cfg = parity_config(sizes, device)
    rtol, atol = fp_tolerance(device)

    class Stop(Exception):
        pass

    def stop_after_first(record: stages.EpochRecord) -> None:
        if record.epoch == 1:
            raise Stop

    with deterministic(device), tempfile.TemporaryDirectory() as tmp:
        full, full_rec = stages.fit_stage1(data, cfg, device=device, progress=False)
        try:
            stages.fit_stage1(data, cfg, device=device, checkpoint_dir=Path(tmp), on_epoch=stop_after_first,
                              progress=False)
            stopped = False
        except Stop:
            stopped = True
        partial = (Path(tmp) / "stage1.partial.pt").exists()
        resumed, res_rec = stages.fit_stage1(data, cfg, device=device, checkpoint_dir=Path(tmp), progress=False)
    ok, worst, key = compare_states(resumed.state_dict(), full.state_dict(), rtol, atol)
    epochs_ok = [r.epoch for r in res_rec] == [r.epoch for r in full_rec]
    loss_rel = max(abs(a.train_loss - b.train_loss) / max(abs(b.train_loss), 1e-12) for a, b in zip(res_rec, full_rec))
    passed = stopped and partial and ok and epochs_ok and loss_rel <= 10 * rtol
    return Check("Stage-1 epoch resumed vs uninterrupted", passed,
                 f"weights and BN buffers allclose rtol {rtol:g} atol {atol:g}; losses rel <= {10 * rtol:g}",
                 {"stopped_after_epoch_1": stopped, "partial_checkpoint": partial, "worst_tol_ratio": worst,
                  "loss_max_rel_diff": loss_rel, "epochs": [r.epoch for r in res_rec]},
                 f"worst: {key}")


def _near_ties(logits: torch.Tensor, diff: torch.Tensor) -> int:
    """Samples whose top-2 margin is within twice their largest logit difference: their argmax may flip."""
    top2 = logits.topk(min(2, logits.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    return int((margin <= 2 * diff.abs().max(dim=1).values).sum())


@_timed
def eval_device_vs_cpu(device: torch.device, sizes: Sizes) -> Check:
    """The same model evaluated on the device and on the CPU gives the same metrics (up to the
    device's precision: near-tied argmaxes may flip); and the metrics of one logits tensor do not
    depend on where evaluate_logits runs."""
    data = parity_data(sizes)
    cfg = parity_config(sizes, device)
    model = stage1_model(device, sizes)
    cpu = torch.device("cpu")
    cpu_model = copy.deepcopy(model).to(cpu)
    lg_dev, labels = stages.predict(model, stages.eval_batches(data, "test", cfg, device), device, cfg.channels_last)
    lg_cpu, _ = stages.predict(cpu_model, stages.eval_batches(data, "test", cfg, cpu), cpu, cfg.channels_last)
    on_dev = stages.evaluate_split(model, data, "test", cfg, device).summary()
    on_cpu = stages.evaluate_split(cpu_model, data, "test", cfg, cpu).summary()
    n = len(labels)
    bf16 = device.type == "cuda"
    logit_rel = rel_l2(lg_dev, lg_cpu)
    ties = _near_ties(lg_cpu, lg_dev - lg_cpu)
    acc_diff = abs(float(on_dev["acc"] or 0) - float(on_cpu["acc"] or 0))
    ece_diff = abs(float(on_dev["ece"] or 0) - float(on_cpu["ece"] or 0))
    nll_rel = abs(float(on_dev["nll"] or 0) - float(on_cpu["nll"] or 0)) / max(abs(float(on_cpu["nll"] or 0)), 1e-12)
    logit_tol, nll_tol = (0.05, 0.05) if bf16 else (1e-5, 1e-5)
    acc_tol = 100.0 * ties / n + 1e-6
    ece_tol = acc_tol + (2.0 if bf16 else 1e-4)
    same = {k: v for k, v in evaluate_logits(lg_cpu.to(device), labels.to(device), data.class_counts).summary().items()}
    ref = evaluate_logits(lg_cpu, labels, data.class_counts).summary()
    metric_diff = max(abs(float(same[k]) - float(ref[k])) for k in ref if ref[k] is not None and same[k] is not None)
    passed = (logit_rel <= logit_tol and acc_diff <= acc_tol and ece_diff <= ece_tol and nll_rel <= nll_tol
              and metric_diff <= 1e-4)
    return Check("evaluation on the device vs the CPU", passed,
                 f"logits rel L2 <= {logit_tol:g}; acc within the near-tied samples' share ({acc_tol:.3g} pp); "
                 f"ECE within {ece_tol:.3g} pp; NLL rel <= {nll_tol:g}; evaluate_logits of one tensor on both "
                 "devices within 1e-4",
                 {"test_images": n, "logits_rel_l2": logit_rel, "near_ties": ties, "acc_device": on_dev["acc"],
                  "acc_cpu": on_cpu["acc"], "acc_diff_pp": acc_diff, "ece_diff_pp": ece_diff, "nll_rel_diff": nll_rel,
                  "same_logits_metric_max_diff": metric_diff})


CHECKS: tuple[Callable[[torch.device, Sizes], Check], ...] = (
    fast_path_vs_dataloader, stacked_vs_one_by_one, bf16_vs_fp32, stage1_resumed_vs_uninterrupted, eval_device_vs_cpu,
)


def run_all(device: torch.device, sizes: Sizes, on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Every comparison in turn; an exception is a failed check naming it (the others still run)."""
    out = []
    for fn in CHECKS:
        t0 = time.perf_counter()
        try:
            result = fn(device, sizes)
        except Exception as exc:  # a crash on the device is a finding, not the end of the check
            result = Check(fn.__name__, False, "-", {}, f"{type(exc).__name__}: {exc}",
                           round(time.perf_counter() - t0, 2))
        out.append(result)
        if on_check is not None:
            on_check(result)
    return out
