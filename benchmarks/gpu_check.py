"""``python -m benchmarks.gpu_check`` (``scripts/gpu-check.sh``): the one prepared check for a lent GPU.

Steps, in this order, each written to its own file under ``--out`` (default ``$OUT``) as soon
as it ends, so a run cut short still returns what finished (docs/gpu-check.md):

a. ``env.json``: GPU name, driver, torch / CUDA / cuDNN versions, free memory (on the CPU it says
   so), and a short speed probe (ResNet-32 training img/s, a bf16 matrix product) that the
   later steps' time estimates scale by;
b. ``correctness.json``: the path comparisons of :mod:`benchmarks.cuda_paths` (fast path vs
   DataLoader, stacked heads vs one by one, bf16 vs fp32, Stage 1 resumed vs uninterrupted,
   evaluation on the device vs the CPU), the same functions ``tests/gpu`` runs under pytest;
c. ``bench.json``: ``benchmarks.run``'s Stage-1 and Stage-2 figures on this device (built from
   its parts: the reference loop, the synthetic CIFAR-LT data, its Stage-2 trial configs, its
   estimator), and paper-scale stacked heads and evaluation (2048 x 1000 and 2048 x 8142) with
   peak GPU memory per member;
d. ``replication.json``: the Fashion-MNIST-LT replication at full size (n_max 6000) on the CPU
   replication's protocol (scripts/replicate.sh: Table 6's CIFAR-10-LT row, ResNet-32, Stage 1
   of 200 epochs with and without mixup, Stage 2 of 10; CE / cRT / LWS / tau-norm on both Stage 1s,
   MiSLAS at Table 6), through :mod:`mislas` directly (no Ray), as many seeds as the budget
   leaves, two runs side by side on the GPU if a measured probe says that is faster;
e. ``summary.json`` and ``summary.md``: every step's status, estimate and time, and the tables.

``--budget-min`` (default 8) is spent in that order: before a step starts its time is
estimated, and a step that would not finish in what is left is skipped, saying why.
``--device cpu --tiny`` runs every step on tiny sizes (the dry mode the test suite runs).
Needs only torch, torchvision, numpy and the repository (no Ray, no Optuna, no pytest).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

import mislas.device
from benchmarks import cuda_paths, synthetic
from benchmarks.reference import PILArrayDataset, reference_loader, reference_steps
from benchmarks.run import cycle, stage2_configs, sync, top_quartile_mean, training_ips
from mislas import fastpath, stages
from mislas.config import RunConfig, apply_overrides, preset_config, with_method
from mislas.data import lt_class_counts
from mislas.data.fashion_mnist import FILES, SYSTEM_DIR, find_fashion_mnist
from mislas.data.loaders import resolve_num_workers
from mislas.las import LabelAwareSmoothing
from mislas.models import Network, ScaledClassifier, build_model
from mislas.stacked import StackedHeads
from mislas.train import load_data

STEPS = ("env", "correctness", "bench", "replication")
LETTER = dict(zip(STEPS, "abcd"))
FILES_OUT = {s: f"{s}.json" for s in STEPS}
STAGED = Path("gpu-data/fashion-mnist")  # --stage-data copies here; the device call carries gpu-data
SUMMARY_RESERVE_S = 3.0  # what step e needs
GIB = 2**30


# --- sizes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchSizes:
    """Step c's sizes. Full: ``benchmarks.run --device cuda``'s (Stage 1: 5 warm-up steps, 20 rounds
    of 10; Stage 2: CIFAR-10-LT size, 32 trials) plus the paper-scale heads."""

    s1_n_max: int
    s1_batch: int
    s1_warm: int
    s1_steps: int
    s1_rounds: int
    s2_n_max: int
    s2_eval_per_class: int
    s2_group: int
    s2_singles: int
    s2_grouped: int
    ps_dim: int
    ps_classes: tuple[int, ...]
    ps_groups: tuple[int, ...]
    ps_batch: int
    ps_steps: int
    ps_eval_images: int
    ps_eval_group: int


FULL_BENCH = BenchSizes(5000, 128, 5, 10, 20, 5000, 100, 32, 4, 2, 2048, (1000, 8142), (1, 8, 32), 256, 10, 10_000, 8)
TINY_BENCH = BenchSizes(100, 32, 1, 1, 3, 100, 10, 4, 2, 1, 64, (10, 50), (1, 4), 32, 2, 256, 2)

# Step d: the CPU replication's protocol (scripts/replicate.sh) at full size, or tiny
FULL_REPLICATION = ("data.n_max=6000",)
TINY_REPLICATION = ("data.n_max=30", "data.imb_factor=10", "data.val_per_class=5", "data.test_per_class=10",
                    "stage1.epochs=2", "stage1.warmup_epochs=1", "stage1.milestones=(1)", "stage1.batch_size=16",
                    "stage2.epochs=1", "stage2.batch_size=16")
ARM_METHODS = {True: ("ce", "crt", "lws", "tau_norm", "mislas"), False: ("ce", "crt", "lws", "tau_norm")}
METRICS = ("acc", "acc_many", "acc_medium", "acc_few", "ece", "ece_after_ts", "nll")
LABELS = {"ce": "CE", "crt": "cRT", "lws": "LWS", "tau_norm": "tau-norm", "mislas": "MiSLAS"}


# --- the run ---------------------------------------------------------------------------------

@dataclass
class Ctx:
    """One check: device, sizes, where results go, the budget, and every step's outcome so far."""

    device: torch.device
    tiny: bool
    out: Path
    budget_s: float
    data_root: Path | None
    seeds: list[int]
    log: TextIO
    t0: float = field(default_factory=time.perf_counter)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, message: str) -> None:
        line = f"[gpu-check {self.elapsed():6.1f} s] {message}"
        print(line, file=sys.stderr, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomically (a cut-short run never leaves half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- a. environment --------------------------------------------------------------------------

def _nvidia_smi() -> dict[str, str] | None:
    """name, driver, memory total / free (MiB) from nvidia-smi, or None where it is missing."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = [p.strip() for p in out.stdout.splitlines()[0].split(",")] if out.stdout.strip() else []
    return dict(zip(("name", "driver", "memory_total_mib", "memory_free_mib"), parts)) if len(parts) == 4 else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def train_ips(device: torch.device, *, batch: int, size: int, channels: int, steps: int, warm: int) -> float:
    """ResNet-32 training img/s on the fast path's layout (channels_last, the library's autocast):
    the speed every later estimate scales by."""
    torch.manual_seed(0)
    m = build_model("resnet32", 10, channels).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    return training_ips(m, x, y, device, warm=warm, steps=steps, autocast=lambda: mislas.device.autocast(device))


def matmul_tflops(device: torch.device, n: int) -> float:
    """bf16 (CUDA) or fp32 (CPU) n x n x n products per second, in TFLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    reps = 10 if device.type == "cuda" else 2
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def step_env(ctx: Ctx) -> dict[str, Any]:
    dev = ctx.device
    info: dict[str, Any] = {
        "device": str(dev), "tiny": ctx.tiny, "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cpus": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
        "load_avg": list(os.getloadavg()), "commit": _git_commit(),
        "packages": {name: importlib.util.find_spec(name) is not None
                     for name in ("pytest", "ray", "optuna", "pandas", "pyarrow", "scipy", "matplotlib")},
    }
    try:
        models = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")]
        info["cpu"] = models[0] if models else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if ctx.cuda:
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        info |= {"gpu": torch.cuda.get_device_name(dev), "capability": list(torch.cuda.get_device_capability(dev)),
                 "multiprocessors": props.multi_processor_count, "memory_total_gib": total / GIB,
                 "memory_free_gib": free / GIB, "cudnn": torch.backends.cudnn.version(),
                 "bf16_supported": torch.cuda.is_bf16_supported(), "nvidia_smi": _nvidia_smi()}
    else:
        info |= {"gpu": None, "note": "no GPU: this is the CPU dry mode, the figures say nothing about a GPU"}
    batch = 32 if ctx.tiny else 128
    info["probe"] = {
        "resnet32_train_ips_32x32x3": train_ips(dev, batch=batch, size=32, channels=3, steps=2 if ctx.tiny else 20,
                                                warm=1 if ctx.tiny else 5),
        "resnet32_train_ips_28x28x1": train_ips(dev, batch=batch, size=28, channels=1, steps=2 if ctx.tiny else 20,
                                                warm=1 if ctx.tiny else 5),
        "batch": batch,
        "matmul_tflops": matmul_tflops(dev, 256 if ctx.tiny else 8192),
    }
    data = resolve_data_root(ctx.data_root)
    info["fashion_mnist"] = str(data) if data else None
    return info


# --- b. correctness --------------------------------------------------------------------------

def step_correctness(ctx: Ctx) -> dict[str, Any]:
    sizes = cuda_paths.TINY if ctx.tiny else cuda_paths.FULL

    def report(check: cuda_paths.Check) -> None:
        ctx.say(f"  {'PASS' if check.passed else 'FAIL'} {check.name} ({check.wall_s:.1f} s) "
                + ", ".join(f"{k}={_short(v)}" for k, v in list(check.measured.items())[:4]))

    checks = cuda_paths.run_all(ctx.device, sizes, report)
    return {"sizes": sizes.__dict__, "passed": all(c.passed for c in checks), "checks": [c.to_dict() for c in checks]}


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --- c. benchmarks ---------------------------------------------------------------------------

def stage1_speed(device: torch.device, bs: BenchSizes) -> dict[str, Any]:
    """``benchmarks.run``'s Stage-1 comparison at ``bs``'s size: the reference-style loop (DataLoader +
    PIL, fp32, contiguous; 0 and "auto" workers) against the fast path, in short interleaved turns;
    speeds are the mean of each variant's fastest quarter of turns (``run.top_quartile_mean``)."""
    cuda = device.type == "cuda"
    data = synthetic.cifar_lt(n_max=bs.s1_n_max)
    lr, batch = 0.01, bs.s1_batch

    def model(channels_last: bool) -> nn.Module:
        torch.manual_seed(0)
        m = build_model("resnet32", data.num_classes).to(device)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    runners: dict[str, Callable[[int], int]] = {}
    ref_ds = PILArrayDataset(data.train.images, data.train.labels, data.mean, data.std)
    for workers in sorted({0, resolve_num_workers("auto")}):
        m = model(False)
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
        it = cycle(reference_loader(ref_ds, batch_size=batch, num_workers=workers, pin_memory=cuda))

        def ref(k: int, m: nn.Module = m, opt: torch.optim.Optimizer = opt, it: Iterator[Any] = it) -> int:
            n = reference_steps(m, it, k, optimizer=opt, device=device)
            sync(device)
            return n

        runners[f"reference: DataLoader+PIL, fp32, contiguous, {workers} workers"] = ref
    variants = [("fast path, contiguous" + (" + bf16 autocast" if cuda else ""), False, "default"),
                ("fast path, channels_last" + (" + bf16 autocast" if cuda else ""), True, "default")]
    if cuda:
        variants.append(("fast path, channels_last, fp32 (autocast off)", True, "fp32"))
    for name, channels_last, mode in variants:
        m = model(channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
        batches = fastpath.train_batches(data, device=device, sampler="instance", batch_size=batch,
                                         generator=torch.Generator().manual_seed(0), channels_last=channels_last)
        it2 = cycle(batches)
        mix = stages.Mixup(1.0, seed=0)

        def fast(k: int, m: nn.Module = m, opt: torch.optim.Optimizer = opt, it: Iterator[Any] = it2,
                 mix: stages.Mixup = mix, cl: bool = channels_last, mode: str = mode) -> int:
            with cuda_paths.precision(mode):
                stages.run_epoch(m, islice(it, k), loss_fn=nn.functional.cross_entropy, optimizer=opt,  # type: ignore[arg-type]
                                 device=device, train_backbone=True, backbone_bn_train=True, mixup=mix,
                                 channels_last=cl)
            sync(device)
            return k * batch

        runners[name] = fast
    for run in runners.values():
        run(bs.s1_warm)
    ips: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(bs.s1_rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            n = run(bs.s1_steps)
            ips[name].append(n / (time.perf_counter() - t0))
    top = {k: top_quartile_mean(v) for k, v in ips.items()}
    refs = [k for k in top if k.startswith("reference")]
    lib = variants[1][0]
    ref_ips = max(top[k] for k in refs)
    return {"ips_top_quartile_mean": top, "ips_median": {k: statistics.median(v) for k, v in ips.items()},
            "batch_size": batch, "steps_per_turn": bs.s1_steps, "rounds": bs.s1_rounds,
            "train_images": len(data.train.labels), "ref_ips": ref_ips, "fast_ips": top[lib],
            "stage1_speedup": top[lib] / ref_ips, "stage1_speedup_data_path_only": top[variants[0][0]] / ref_ips,
            "stage1_200ep_cifar10_lt_projected_s": 200 * 12_406 / top[lib]}


def stage2_speed(device: torch.device, bs: BenchSizes) -> dict[str, Any]:
    """``benchmarks.run``'s Stage-2 comparison: one epoch of G grouped MiSLAS trials (stacked heads; and
    heads one by one) against single trials, interleaved; one by one = G x the fastest single epoch."""
    data = synthetic.cifar_lt(n_max=bs.s2_n_max, eval_per_class=bs.s2_eval_per_class)
    cfgs = stage2_configs(bs.s2_group)
    torch.manual_seed(0)
    model = stages.new_model(data, cfgs[0], device)
    stages.evaluate_split(model, data, "val", cfgs[0], device)  # warm-up: resident copies, kernels
    single, grouped = [], []
    loop_s = math.nan
    for r in range(max(bs.s2_singles, bs.s2_grouped)):
        if r < bs.s2_singles:
            single.append(stages.train_stage2(data, model, cfgs[r % len(cfgs)], device=device,
                                              progress=False).epochs[0].wall_s)
        if r < bs.s2_grouped:
            grouped.append(stages.train_stage2_group(data, model, cfgs, device=device,
                                                     progress=False)[0].epochs[0].wall_s)
        if r == 0:
            loop_s = stages.train_stage2_group(data, model, cfgs, device=device, progress=False,
                                               vectorize=False)[0].epochs[0].wall_s
    g = bs.s2_group
    return {"n_max": bs.s2_n_max, "train_images": len(data.train.labels), "group": g,
            "single_epoch_s": single, "group_epoch_s": grouped, "group_loop_epoch_s": loop_s,
            "stage2_group_speedup": g * min(single) / min(grouped),
            "stage2_group_speedup_unvectorised": g * min(single) / loop_s}


def _heads(g: int, dim: int, k: int, device: torch.device) -> tuple[list[nn.Module], list[torch.optim.SGD],
                                                                       list[nn.Module]]:
    """G MiSLAS heads (W, b, per-class scale; LAS over a long-tailed profile; two SGD groups, as
    :func:`mislas.stage2.members.new_member` builds them) on ``dim``-d features and ``k`` classes."""
    counts = lt_class_counts(k, 1000, 200.0)
    heads, opts, losses = [], [], []
    for i in range(g):
        linear = nn.Linear(dim, k, device=device)  # initialised where it lives: 67 MB a head at 2048 x 8142
        head = ScaledClassifier(linear, train_weight=True, train_scale=True)
        losses.append(LabelAwareSmoothing(counts, 0.1 + 0.3 * (i % 4) / 3, 0.05 * (i % 3), form="concave",
                                          target="reference").to(device))
        opts.append(torch.optim.SGD([{"params": list(linear.parameters()), "lr": 0.01},
                                     {"params": [head.scale], "lr": 0.1}], lr=0.1, momentum=0.9,
                                    weight_decay=5e-4))
        heads.append(head)
    return heads, opts, losses  # type: ignore[return-value]


def _peak_reset(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return int(torch.cuda.memory_allocated(device))


def _peak(device: torch.device, base: int) -> float | None:
    """Peak GiB allocated above ``base`` since :func:`_peak_reset` (None on the CPU: no allocator statistics)."""
    if device.type != "cuda":
        return None
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / GIB


def paper_scale(device: torch.device, bs: BenchSizes) -> list[dict[str, Any]]:
    """Stacked MiSLAS heads at ResNet-50's 2048-d features and ImageNet-LT's 1000 / iNaturalist's 8142
    classes: ms per training step (batch 256, the step of ``mislas.stage2.engine.epoch_step``) and per member, peak
    GPU memory per member; and the heads' evaluation (logits on the device, metrics on the CPU, as
    ``stages.predict_heads`` + ``evaluate_logits``) per member and 1000 images."""
    from mislas.metrics import evaluate_logits

    rows = []
    for k in bs.ps_classes:
        for g in bs.ps_groups:
            base = _peak_reset(device)
            heads, opts, losses = _heads(g, bs.ps_dim, k, device)
            stacked = StackedHeads(heads, opts, losses)
            gen = torch.Generator(device=device).manual_seed(0)
            feats = torch.randn(bs.ps_batch, bs.ps_dim, device=device, generator=gen)
            y = torch.randint(0, k, (bs.ps_batch,), device=device, generator=gen)

            def step(stacked: StackedHeads = stacked, feats: torch.Tensor = feats, y: torch.Tensor = y) -> None:
                with mislas.device.autocast(device):
                    loss = stacked.loss(stacked.logits(feats), y)
                torch.autograd.backward(loss.sum())
                stacked.step()

            for _ in range(2):
                step()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(bs.ps_steps):
                step()
            sync(device)
            ms = (time.perf_counter() - t0) / bs.ps_steps * 1000
            peak = _peak(device, base)
            row: dict[str, Any] = {"dim": bs.ps_dim, "classes": k, "group": g, "batch": bs.ps_batch,
                                   "train_ms_per_step": ms, "train_ms_per_step_per_member": ms / g,
                                   "train_peak_gib": peak, "train_peak_gib_per_member": None if peak is None else peak / g}
            if g == max(bs.ps_groups):
                ge = min(g, bs.ps_eval_group)
                stacked.store()
                backbone = Network(nn.Identity(), bs.ps_dim, k).to(device)
                n = bs.ps_eval_images
                xs = torch.randn(n, bs.ps_dim, generator=torch.Generator().manual_seed(1))
                ys = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(2))
                batches = [(xs[i:i + 256], ys[i:i + 256]) for i in range(0, n, 256)]
                base_e = _peak_reset(device)
                t0 = time.perf_counter()
                logits, labels = stages.predict_heads(backbone, heads[:ge], batches, device, False)
                t_logits = time.perf_counter() - t0
                for lg in logits:
                    evaluate_logits(lg, labels, lt_class_counts(k, 1000, 200.0))
                t_all = time.perf_counter() - t0
                peak_e = _peak(device, base_e)
                row |= {"eval_members": ge, "eval_images": n,
                        "eval_logits_s_per_member_per_1k": t_logits / ge / (n / 1000),
                        "eval_s_per_member_per_1k": t_all / ge / (n / 1000),
                        "eval_peak_gib": peak_e}
                del logits, labels
            rows.append(row)
            del stacked, heads, opts, losses, step
    singles = {r["classes"]: r for r in rows if r["group"] == min(bs.ps_groups)}
    for r in rows:
        one = singles[r["classes"]]
        if r["group"] > one["group"] and r["train_peak_gib"] is not None:
            r["train_peak_gib_marginal_per_member"] = (r["train_peak_gib"] - one["train_peak_gib"]) / (
                r["group"] - one["group"])
    return rows


def step_bench(ctx: Ctx) -> dict[str, Any]:
    bs = TINY_BENCH if ctx.tiny else FULL_BENCH
    out: dict[str, Any] = {"sizes": bs.__dict__, "load_avg_start": list(os.getloadavg())}
    out["stage1"] = stage1_speed(ctx.device, bs)
    ctx.say(f"  stage 1: fast path {out['stage1']['fast_ips']:.0f} img/s, reference {out['stage1']['ref_ips']:.0f}, "
            f"stage1_speedup {out['stage1']['stage1_speedup']:.2f}x")
    out["stage2"] = stage2_speed(ctx.device, bs)
    ctx.say(f"  stage 2: stage2_group_speedup {out['stage2']['stage2_group_speedup']:.1f}x "
            f"({bs.s2_group} trials)")
    out["paper_scale"] = paper_scale(ctx.device, bs)
    for r in out["paper_scale"]:
        ctx.say(f"  paper scale {r['dim']}x{r['classes']} G={r['group']}: {r['train_ms_per_step']:.2f} ms/step, "
                f"peak {_short(r['train_peak_gib'])} GiB")
    out["load_avg_end"] = list(os.getloadavg())
    return out


# --- d. replication --------------------------------------------------------------------------

def resolve_data_root(given: Path | None) -> Path | None:
    """The folder with Fashion-MNIST's four IDX files: ``given``, else the staged copy, else Debian's."""
    folders = [given] if given is not None else [STAGED, SYSTEM_DIR]
    for folder in folders:
        if folder is not None and find_fashion_mnist([folder]) is not None:
            return folder
    return None


def replication_config(ctx_tiny: bool, data_root: Path, device: torch.device) -> RunConfig:
    """The CPU replication's config (paper budget, Fashion-MNIST-LT) at full size, or tiny."""
    overrides = TINY_REPLICATION if ctx_tiny else FULL_REPLICATION
    cfg = apply_overrides(preset_config("paper", "fashion_mnist_lt"), [*overrides, f"data.data_root={data_root}"])
    return replace(cfg, device=device.type)


@lru_cache(maxsize=2)
def _data(cfg_data: Any) -> Any:
    return load_data(RunConfig(data=cfg_data))


def arm(cfg: RunConfig, methods: tuple[str, ...], threads: int) -> dict[str, Any]:
    """One Stage 1 (``cfg.stage1.mixup`` on or off, ``cfg.seed``) and the Stage-2 ``methods`` on it, in a
    worker process: per-epoch times and one row of test metrics per method."""
    torch.set_num_threads(threads)
    device = stages.resolve_device(cfg.device)
    data = _data(cfg.data)
    t0 = time.perf_counter()
    model, records = stages.fit_stage1(data, cfg, device=device, progress=False)
    out: dict[str, Any] = {"seed": cfg.seed, "mixup": cfg.stage1.mixup, "epochs": cfg.stage1.epochs,
                           "train_images": len(data.train.labels), "stage1_s": time.perf_counter() - t0,
                           "epoch_wall_s": [r.wall_s for r in records], "rows": []}
    for method in methods:
        t1 = time.perf_counter()
        name = LABELS[method] + ("+mixup" if cfg.stage1.mixup and method != "mislas" else "")
        row: dict[str, Any] = {"method": name, "seed": cfg.seed}
        try:
            res = stages.train_stage2(data, model, with_method(cfg, method), device=device, progress=False)
        except Exception as exc:  # a diverged method is a result; the arm's other methods still run
            row |= {k: None for k in METRICS} | {"error": " ".join(f"{type(exc).__name__}: {exc}".split())}
        else:
            test = res.test.summary()
            row |= {k: test[k] for k in METRICS if k != "ece_after_ts"}
            row["ece_after_ts"] = res.test_ts.summary()["ece"] if res.test_ts is not None else None
        row["stage2_s"] = time.perf_counter() - t1
        out["rows"].append(row)
    return out


def arm_or_error(cfg: RunConfig, methods: tuple[str, ...], threads: int) -> dict[str, Any]:
    """:func:`arm`, with an exception turned into its message: not every exception survives the
    trip back from a worker process (pickling), and the message is what the report needs."""
    try:
        return arm(cfg, methods, threads)
    except Exception as exc:
        return {"seed": cfg.seed, "mixup": cfg.stage1.mixup, "error": " ".join(f"{type(exc).__name__}: {exc}".split()),
                "rows": []}


def _warm(cfg: RunConfig, threads: int) -> float:
    """A worker's start-up: imports, CUDA context, data, one short epoch's kernels (not timed as training)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    device = stages.resolve_device(cfg.device)
    data = _data(cfg.data)
    try:
        stages.fit_stage1(data, replace(cfg, stage1=replace(cfg.stage1, epochs=1)), device=device, progress=False)
    except Exception:  # noqa: S110 -- warming up only; the probe that follows reports what breaks
        pass
    return time.perf_counter() - t0


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    """A probe's result, or its worker's error raised here (the probe decides the plan)."""
    if "error" in result:
        raise RuntimeError(f"side-by-side probe: {result['error']}")
    return result


def _epoch_s(result: dict[str, Any]) -> float:
    """Steady-state seconds per Stage-1 epoch: epochs after the first (cuDNN's choices, caches)."""
    wall = result["epoch_wall_s"]
    return (wall[-1] - wall[0]) / (len(wall) - 1) if len(wall) > 1 else wall[0]


def step_replication(ctx: Ctx, write: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    root = resolve_data_root(ctx.data_root)
    if root is None:
        raise FileNotFoundError(f"no Fashion-MNIST IDX files ({FILES['train_images']}.gz and 3 more) in "
                                f"{ctx.data_root or f'{STAGED} or {SYSTEM_DIR}'}; run scripts/gpu-check.sh "
                                f"--stage-data and carry gpu-data")
    cfg = replication_config(ctx.tiny, root, ctx.device)
    if ctx.cuda:
        torch.cuda.empty_cache()  # steps b and c's cached blocks: the workers' GPU memory
    cpus = len(os.sched_getaffinity(0))
    probe_epochs = 2 if ctx.tiny else 3
    probe = replace(cfg, stage1=replace(cfg.stage1, epochs=probe_epochs))
    out: dict[str, Any] = {"data_root": str(root), "protocol": "scripts/replicate.sh's study (paper budget, "
                           "Table 6 CIFAR-10-LT row) at " + ("tiny size" if ctx.tiny else "n_max 6000"),
                           "config": cfg.to_dict(), "seeds_asked": ctx.seeds, "arms": [], "rows": []}
    threads = max(1, cpus // 2)  # each of two workers; the GPU, not the CPU threads, should set the pace
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        warm = [pool.submit(_warm, cfg, threads) for _ in range(2)]
        out["worker_start_s"] = [f.result() for f in warm]
        alone = _checked(pool.submit(arm_or_error, probe, (), threads).result())  # the same threads as each of a pair
        pair = [_checked(f.result()) for f in [pool.submit(arm_or_error, probe, (), threads) for _ in range(2)]]
        n = alone["train_images"]
        rate_alone = n / _epoch_s(alone)
        rate_pair = sum(n / _epoch_s(r) for r in pair)
        side = rate_pair / rate_alone >= 1.1
        out["side_by_side"] = {"probe_epochs": probe_epochs, "alone_img_s": rate_alone, "pair_img_s": rate_pair,
                               "pair_over_alone": rate_pair / rate_alone, "used": side,
                               "rule": "two Stage 1s side by side when the pair trains >= 1.1x the images/s of one"}
        ctx.say(f"  side by side: one run {rate_alone:.0f} img/s, two runs {rate_pair:.0f} img/s together "
                f"({rate_pair / rate_alone:.2f}x): {'side by side' if side else 'one at a time'}")
        epochs = cfg.stage1.epochs
        # a seed = two Stage 1s + their Stage 2s (about 6 % more: 3 trained methods x 10 epochs of
        # ceil(N/B)+1 frozen-backbone steps, plus evaluations)
        per_seed = 2 * epochs * n * 1.06 / (rate_pair if side else rate_alone) + (5.0 if ctx.tiny else 15.0)
        out["seed_estimate_s"] = per_seed
        write(out)
        for seed in ctx.seeds:
            if per_seed > ctx.left() - SUMMARY_RESERVE_S:
                out.setdefault("seeds_skipped", []).append(
                    {"seed": seed, "reason": f"estimated {per_seed:.0f} s, {ctx.left():.0f} s of the budget left"})
                ctx.say(f"  seed {seed} skipped: estimated {per_seed:.0f} s, {ctx.left():.0f} s left")
                continue
            cfgs = [replace(cfg, seed=seed, stage1=replace(cfg.stage1, mixup=m)) for m in (True, False)]
            t0 = time.perf_counter()
            if side:
                results = [f.result() for f in [pool.submit(arm_or_error, c, ARM_METHODS[c.stage1.mixup], threads)
                                                for c in cfgs]]
            else:
                results = [pool.submit(arm_or_error, c, ARM_METHODS[c.stage1.mixup], threads).result()
                           for c in cfgs]
            took = time.perf_counter() - t0
            for r in results:
                out["arms"].append({k: v for k, v in r.items() if k != "rows"})
                out["rows"].extend(r["rows"])
            out.setdefault("seed_wall_s", {})[str(seed)] = took
            ctx.say(f"  seed {seed}: {took:.0f} s (estimated {per_seed:.0f} s); " + ", ".join(
                f"{r['method']} {_fmt(r['acc'], 1) if r['acc'] is not None else r['error']}"
                for r in out["rows"] if r["seed"] == seed) + "".join(
                f"; arm {'mixup' if r['mixup'] else 'plain'}: {r['error']}" for r in results if "error" in r))
            write(out)
    out["table"] = replication_table(out["rows"])
    if not out["rows"]:
        out["status"] = "partial"
        out["step_note"] = "no seed fitted in the budget left (see seeds_skipped); the probe is in side_by_side"
    return out


def replication_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per method (in the paper's order)."""
    order = ["CE", "cRT", "LWS", "tau-norm", "CE+mixup", "cRT+mixup", "LWS+mixup", "tau-norm+mixup", "MiSLAS"]
    table = []
    for name in order:
        rs = [r for r in rows if r["method"] == name]
        if not rs:
            continue
        entry: dict[str, Any] = {"method": name, "seeds": len(rs), "failed": sum("error" in r for r in rs)}
        for key in METRICS:
            vals = [float(r[key]) for r in rs if r[key] is not None]
            entry[key] = statistics.mean(vals) if vals else None
            entry[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        table.append(entry)
    return table


# --- estimates -------------------------------------------------------------------------------

# Device seconds of steps b and c at the probe's assumed rates (docs/gpu-check.md derives them):
# full = an H100/H200 at ~25,000 ResNet-32 training img/s (32x32, batch 128); tiny = this 2-core
# CPU at ~150 img/s (batch 32). The estimate scales by the measured probe rate.
BASE_S = {"full": {"correctness": 45.0, "bench": 75.0}, "tiny": {"correctness": 25.0, "bench": 20.0}}
BASE_IPS = {"full": 25_000.0, "tiny": 150.0}


def estimate(ctx: Ctx, step: str) -> float | None:
    """Seconds ``step`` should take here; None where it plans itself (d: per seed, from its probe)."""
    if step == "env":
        return 10.0 if ctx.tiny else 20.0
    if step == "replication":
        return 25.0 if ctx.tiny else 45.0  # worker start-up + the side-by-side probe; seeds are planned inside
    mode = "tiny" if ctx.tiny else "full"
    probe = ctx.outputs.get("env", {}).get("probe", {})
    ips = probe.get("resnet32_train_ips_32x32x3")
    scale = BASE_IPS[mode] / ips if ips else 1.0
    return BASE_S[mode][step] * max(scale, 0.25)


# --- e. summary ------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """CPU time of this process and its finished children (workers): on a loaded machine the
    unloaded wall time of a one-thread run is about this."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def summary(ctx: Ctx) -> dict[str, Any]:
    env = ctx.outputs.get("env", {})
    return {"device": str(ctx.device), "gpu": env.get("gpu"), "tiny": ctx.tiny, "budget_s": ctx.budget_s,
            "wall_s": round(ctx.elapsed(), 1), "cpu_s": round(cpu_seconds(), 1),
            "load_avg_end": list(os.getloadavg()), "steps": {s: ctx.steps.get(s, {"status": "not reached"})
                                                          for s in STEPS},
            "files": {s: FILES_OUT[s] for s in STEPS if (ctx.out / FILES_OUT[s]).exists()}}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if 0.01 <= abs(v) < 1e6 or v == 0 else f"{v:.2e}"
    return str(v)


def summary_md(ctx: Ctx, s: dict[str, Any]) -> str:
    env = ctx.outputs.get("env", {})
    where = env.get("gpu") or f"CPU ({env.get('cpu', '?')}), dry mode"
    lines = [f"# GPU check: {where}", "",
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), driver "
             f"{(env.get('nvidia_smi') or {}).get('driver', '–')}, "
             f"{'tiny sizes' if ctx.tiny else 'full sizes'}, budget {ctx.budget_s / 60:.1f} min, "
             f"took {s['wall_s']:.0f} s ({s['cpu_s']:.0f} CPU s; load average at the end "
             f"{s['load_avg_end'][0]:.1f}).", "",
             "| step | status | estimated s | took s | CPU s | note |", "| --- | --- | --- | --- | --- | --- |"]
    for step in STEPS:
        st = s["steps"][step]
        lines.append(f"| {LETTER[step]}. {step} | {st['status']} | {_fmt(st.get('estimate_s'), 0)} | "
                     f"{_fmt(st.get('wall_s'), 0)} | {_fmt(st.get('cpu_s'), 0)} | "
                     f"{st.get('reason', st.get('error', ''))} |")
    done = {k: v for k, v in ctx.outputs.items() if "error" not in v}  # a broken step has its error above
    corr = done.get("correctness")
    if corr:
        lines += ["", "## b. CUDA correctness", "", "| comparison | passed | measured | tolerance |",
                  "| --- | --- | --- | --- |"]
        for c in corr["checks"]:
            meas = ", ".join(f"{k} {_short(v)}" for k, v in c["measured"].items() if not isinstance(v, list))
            lines.append(f"| {c['name']} | {_fmt(c['passed'])} | {meas or c['detail']} | {c['tolerance']} |")
    bench = done.get("bench")
    if bench:
        s1, s2 = bench["stage1"], bench["stage2"]
        lines += ["", "## c. Speed", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| Stage 1 img/s, {k} | {v:.0f} |" for k, v in s1["ips_top_quartile_mean"].items()]
        lines += [f"| stage1_speedup | {s1['stage1_speedup']:.2f}x |",
                  f"| Stage 1, 200 epochs CIFAR-10-LT, projected | {s1['stage1_200ep_cifar10_lt_projected_s']:.0f} s |",
                  f"| stage2_group_speedup ({s2['group']} trials, stacked) | {s2['stage2_group_speedup']:.1f}x |",
                  f"| ... heads one by one | {s2['stage2_group_speedup_unvectorised']:.1f}x |"]
        lines += ["", "| features x classes | members | ms / step | ms / step / member | peak GiB | GiB / member "
                  "(marginal) | eval s / member / 1k images |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in bench["paper_scale"]:
            lines.append(f"| {r['dim']} x {r['classes']} | {r['group']} | {r['train_ms_per_step']:.2f} | "
                         f"{r['train_ms_per_step_per_member']:.3f} | {_fmt(r['train_peak_gib'])} | "
                         f"{_fmt(r.get('train_peak_gib_marginal_per_member'), 3)} | "
                         f"{_fmt(r.get('eval_s_per_member_per_1k'), 3)} |")
    rep = done.get("replication")
    if rep:
        sbs = rep.get("side_by_side", {})
        lines += ["", "## d. Fashion-MNIST-LT replication", "",
                  f"{rep['protocol']}; two runs side by side: {_fmt(sbs.get('pair_over_alone'))}x the images/s of "
                  f"one ({'used' if sbs.get('used') else 'not used'}); seeds done: "
                  f"{sorted({r['seed'] for r in rep['rows']})}.", "",
                  "| method | seeds (failed) | test acc | Many | Medium | Few | ECE | ECE after TS | NLL |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in rep.get("table", replication_table(rep["rows"])):
            def pm(key: str, t: dict[str, Any] = t) -> str:
                sd = t.get(key + "_sd")
                return _fmt(t[key]) + (f" ± {_fmt(sd)}" if sd is not None else "")
            lines.append(f"| {t['method']} | {t['seeds']} ({t['failed']}) | {pm('acc')} | {pm('acc_many')} | {pm('acc_medium')} | "
                         f"{pm('acc_few')} | {pm('ece')} | {pm('ece_after_ts')} | {pm('nll')} |")
        lines += [f"- {r['method']}, seed {r['seed']}: {r['error']}" for r in rep["rows"] if "error" in r]
        lines += [f"- Stage 1 {'mixup' if a['mixup'] else 'plain'}, seed {a['seed']}: {a['error']}"
                  for a in rep["arms"] if "error" in a]
    return "\n".join(lines) + "\n"


def write_summary(ctx: Ctx) -> dict[str, Any]:
    s = summary(ctx)
    write_json(ctx.out / "summary.json", s)
    (ctx.out / "summary.md").write_text(summary_md(ctx, s))
    return s


# --- driver ----------------------------------------------------------------------------------

def run_step(ctx: Ctx, step: str, fn: Callable[[], dict[str, Any]]) -> None:
    est = estimate(ctx, step)
    record: dict[str, Any] = {"estimate_s": est}
    ctx.steps[step] = record
    if est is not None and est > ctx.left() - SUMMARY_RESERVE_S:
        record |= {"status": "skipped", "reason": f"estimated {est:.0f} s, {max(ctx.left(), 0):.0f} s of the "
                                                  f"budget left"}
        ctx.say(f"{LETTER[step]}. {step}: skipped ({record['reason']})")
        write_summary(ctx)
        return
    ctx.say(f"{LETTER[step]}. {step}: starting (estimated {_fmt(est, 0)} s, {ctx.left():.0f} s left)")
    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        result = fn()
        record["status"] = result.pop("status", "ok")
        if "step_note" in result:
            record["reason"] = result["step_note"]
        if step == "correctness" and not result["passed"]:
            record["status"] = "failed"
            record["reason"] = "comparisons failed: " + ", ".join(c["name"] for c in result["checks"]
                                                                   if not c["passed"])
    except Exception as exc:  # a step that breaks on the device is reported; the next still runs
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        record |= {"status": "error", "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
        ctx.say(f"{LETTER[step]}. {step}: error {record['error']}")
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    record["cpu_s"] = round(cpu_seconds() - c0, 1)
    result["wall_s"] = record["wall_s"]
    ctx.outputs[step] = result
    write_json(ctx.out / FILES_OUT[step], result)
    write_summary(ctx)
    ctx.say(f"{LETTER[step]}. {step}: {record['status']} in {record['wall_s']:.1f} s -> {FILES_OUT[step]}")


def stage_data(source: Path | None) -> int:
    """Copy the four Fashion-MNIST files into ``gpu-data/fashion-mnist`` (ignored; the device call carries it)."""
    folder = source or SYSTEM_DIR
    files = find_fashion_mnist([folder])
    if files is None:
        print(f"error: --stage-data: no Fashion-MNIST IDX files ({FILES['train_images']}[.gz] and 3 more) in {folder}; "
              f"install dataset-fashion-mnist or pass --data-root", file=sys.stderr)
        return 2
    STAGED.mkdir(parents=True, exist_ok=True)
    for path in files.values():
        shutil.copy2(path, STAGED / path.name)
    total = sum((STAGED / p.name).stat().st_size for p in files.values())
    print(f"staged {len(files)} files ({total / 2**20:.1f} MiB) from {folder} in {STAGED}; carry 'gpu-data' in the "
          f"device call")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu-check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (default where available) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU dry mode: --device cpu --tiny)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else runs/gpu-check)")
    p.add_argument("--budget-min", type=float, default=8.0, help="minutes to spend, steps in order (default 8)")
    p.add_argument("--data-root", type=Path, default=None,
                   help=f"Fashion-MNIST's four IDX files (default {STAGED}, else {SYSTEM_DIR})")
    p.add_argument("--seeds", default="0,1,2", help="replication seeds, in order, as many as fit (default 0,1,2)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"a subset of {','.join(STEPS)} (default all)")
    p.add_argument("--stage-data", action="store_true", help=f"copy Fashion-MNIST into {STAGED} and exit")
    args = p.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        p.error(f"--steps: unknown {', '.join(bad)}; allowed: {', '.join(STEPS)}")
    args.steps = steps
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: integers separated by commas, got {args.seeds!r}")
    if not args.budget_min > 0:
        p.error(f"--budget-min must be > 0, got {args.budget_min}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); use --device cpu --tiny")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage_data:
        return stage_data(args.data_root)
    out = args.out or Path(os.environ.get("OUT") or "runs/gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors on a shared CPU: one thread (see tests/conftest.py)
    try:
        return _run(args, out)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, out: Path) -> int:
    with open(out / "log.txt", "w") as log:
        ctx = Ctx(torch.device(args.device), args.tiny, out, args.budget_min * 60, args.data_root, args.seeds, log)
        ctx.say(f"device {ctx.device}, {'tiny' if args.tiny else 'full'} sizes, budget {args.budget_min} min, "
                f"results in {out}")
        fns: dict[str, Callable[[], dict[str, Any]]] = {
            "env": lambda: step_env(ctx),
            "correctness": lambda: step_correctness(ctx),
            "bench": lambda: step_bench(ctx),
            "replication": lambda: step_replication(ctx, lambda partial: write_json(out / FILES_OUT["replication"],
                                                                                     partial)),
        }
        for step in STEPS:
            if step in args.steps:
                run_step(ctx, step, fns[step])
            else:
                ctx.steps[step] = {"status": "not asked", "reason": "--steps"}
        s = write_summary(ctx)
        ctx.say(f"e. summary: {out / 'summary.json'}, {out / 'summary.md'} ({s['wall_s']:.0f} s)")
    print((out / "summary.md").read_text())
    # a step skipped for the budget is an answer; a failed comparison or a broken step is not
    return 1 if any(st["status"] in ("error", "failed") for st in s["steps"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
