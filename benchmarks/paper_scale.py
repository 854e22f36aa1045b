"""Paper-scale figures (issue 16), measured with the library's own functions on synthetic data.

- Stacked Stage-2 heads at D = 2048, K = 1000, G = 16 (ImageNet-LT's classes on a ResNet-50's
  features), MiSLAS members (W, b and the scale trained, LAS loss), batch 128: time per step of
  the heads one by one (each its own ``torch.optim.SGD``) ÷ stacked, and the peak memory of
  each way of stepping, in copies of G×K×D float32.
- The temperature fit on iNaturalist-2018-shaped validation logits (24,426 × 8,142): passes
  over the logits and the fit's CPU time ÷ one float32 ``log_softmax`` over them.
- The Stage-2 checkpoint at iNaturalist's shapes (D = 2048, K = 8,142): bytes written per epoch
  per member (``/proc/self/io`` wchar around one real engine write and the report that follows,
  G = 2 minus G = 1), with the state in the reported folder (before) and moved into the store
  with a pointer reported (after, :mod:`study.engine_state`); see :func:`bench_checkpoint`.

Stacked time: the fastest of ``rounds`` interleaved turns of each kind, wall clock (timeit's
rule), and the same from CPU time; one long temperature fit cannot be repeated, so its figure
is from CPU time (see :class:`_Clock`).

Memory method: the peak resident set size of this process (Linux ``VmHWM``, reset to the
current RSS by writing ``5`` to ``/proc/self/clear_refs`` before each window) minus the RSS at
the window's start. torch's CPU allocator caches nothing; a G×K×D tensor (131 MB) is above
glibc's mmap threshold (32 MB at most), so it is mapped when allocated and unmapped when
freed, and a member's K×D tensor (8 MB) that the heap serves from freed memory is counted
because the heap's free pages are handed back (``malloc_trim``) before each window, so
reusing them faults them in again. The window starts after the
members (their heads and optimizers) exist, so it counts what stepping them adds: for the
stacked heads the stacked W, b and scale, their momentum, the gradient and any scratch; for the
loop the members' gradients, momentum buffers and scratch.

``before=True`` also runs the implementations issue 16 replaced (:mod:`benchmarks.legacy`) in
the same process, interleaved, for the before/after figures.
"""

from __future__ import annotations

import ctypes
import gc
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from benchmarks.legacy import StackedHeadsBefore, fit_temperature_before
from benchmarks.synthetic import trained_logits
from mislas.calibration import _grad_curv, temperature_fit
from mislas.data import lt_class_counts
from mislas.las import LabelAwareSmoothing
from mislas.models import ScaledClassifier
from mislas.stacked import StackedHeads

INAT_VAL, INAT_CLASSES = 24_426, 8_142
Members = tuple[list[nn.Module], list[torch.optim.SGD], list[nn.Module]]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _trim_heap() -> None:
    """Give freed heap pages back (glibc ``malloc_trim``), so that reusing them counts in the RSS again."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_window(run: Callable[[], Any]) -> int:
    """Bytes by which the peak RSS while ``run()`` runs exceeds the RSS at its start (see module doc)."""
    gc.collect()
    _trim_heap()
    Path("/proc/self/clear_refs").write_text("5")
    start = _status_kb("VmRSS")
    run()
    return (_status_kb("VmHWM") - start) * 1024


def members(g: int, k: int, d: int, *, seed: int = 0) -> Members:
    """G MiSLAS Stage-2 members on one D→K Stage-1 classifier, differing in lr, ΔW ratio, ε, momentum, wd."""
    torch.manual_seed(seed)
    base = nn.Linear(d, k)
    counts = lt_class_counts(k, 1000, 100.0)
    heads: list[nn.Module] = []
    opts: list[torch.optim.SGD] = []
    losses: list[nn.Module] = []
    for i in range(g):
        linear = nn.Linear(d, k)
        linear.load_state_dict(base.state_dict())
        head = ScaledClassifier(linear, train_weight=True, train_scale=True)
        lr = (0.05, 0.1)[i % 2]
        groups = [{"params": list(linear.parameters()), "lr": lr * (0.05, 0.1, 0.2, 0.5)[i % 4]},
                  {"params": [head.scale], "lr": lr}]
        heads.append(head)
        opts.append(torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=(5e-4, 1e-4)[i % 2]))
        losses.append(LabelAwareSmoothing(counts, 0.1 + 0.3 * (i % 8) / 7, 0.05 * (i % 3), target="paper"))
    return heads, opts, losses


def stacked_step(stacked: StackedHeads, x: torch.Tensor, y: torch.Tensor) -> None:
    losses = stacked.loss(stacked.logits(x), y)
    torch.autograd.backward(losses.sum())
    stacked.step()


def loop_step(m: Members, x: torch.Tensor, y: torch.Tensor) -> None:
    for head, opt, loss_fn in zip(*m):
        loss = loss_fn(head(x), y)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()


def bench_stacked(g: int = 16, k: int = 1000, d: int = 2048, *, batch: int = 128, rounds: int = 6,
                  before: bool = False) -> dict[str, Any]:
    """Time per step (one by one, stacked, and the old stacked if ``before``) and peak copies of G×K×D."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, d, generator=gen).relu_()
    y = torch.randint(0, k, (batch,), generator=gen)
    copy_bytes = g * k * d * 4
    kinds: dict[str, Callable[[Members], Callable[[], None]]] = {
        "loop": lambda m: lambda: loop_step(m, x, y),
        "stacked": lambda m: (lambda s: lambda: stacked_step(s, x, y))(StackedHeads(*m)),
    }
    if before:
        kinds["stacked_before"] = lambda m: (lambda s: lambda: stacked_step(s, x, y))(StackedHeadsBefore(*m))
    copies: dict[str, float] = {}
    for name, make in kinds.items():  # memory first, each kind on fresh members
        m = members(g, k, d)

        def window(make: Callable[[Members], Callable[[], None]] = make, m: Members = m) -> None:
            step = make(m)
            for _ in range(3):
                step()

        copies[name] = peak_window(window) / copy_bytes
        del m
    steps = {name: make(members(g, k, d)) for name, make in kinds.items()}
    for step in steps.values():
        step()  # warm-up: momentum buffers exist, kernels chosen
    secs: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):  # interleaved: a burst of load hits one turn, not one kind
        for name, step in steps.items():
            with _Clock() as c:
                step()
            secs[name].append(c.wall)
            cpu[name].append(c.cpu)
    best = {name: min(v) for name, v in secs.items()}
    best_cpu = {name: min(v) for name, v in cpu.items()}
    med = {name: statistics.median(v) for name, v in secs.items()}
    out: dict[str, Any] = {"shape": {"G": g, "K": k, "D": d, "B": batch}, "rounds": rounds,
                           "step_s": {n: [round(s, 4) for s in v] for n, v in secs.items()},
                           "peak_copies": copies, "copy_bytes": copy_bytes,
                           "step_cpu_s": {n: [round(s, 4) for s in v] for n, v in cpu.items()},
                           "stacked_vs_loop": best["loop"] / best["stacked"],
                           "stacked_vs_loop_median": med["loop"] / med["stacked"],
                           "stacked_vs_loop_cpu": best_cpu["loop"] / best_cpu["stacked"]}
    if before:
        out["stacked_before_vs_loop"] = best["loop"] / best["stacked_before"]
        out["stacked_vs_stacked_before"] = best["stacked_before"] / best["stacked"]
        out["stacked_before_vs_loop_cpu"] = best_cpu["loop"] / best_cpu["stacked_before"]
    return out


class _Clock:
    """Wall and CPU seconds of a block. This process's CPU time (``time.process_time``) leaves out
    the time it waits for a core, so on a machine shared with other jobs the ratio of two CPU
    times is the robust one (one intra-op thread: CPU time = the work done)."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bench_temperature(n: int = INAT_VAL, k: int = INAT_CLASSES, *, before: bool = False) -> dict[str, Any]:
    """Passes and time of the temperature fit on trained-looking logits, ÷ one log_softmax over them.

    ``s_per_softmax`` is in CPU seconds (see :class:`_Clock`); the wall seconds come with it.
    """
    z, y = trained_logits(n, k, seed=0)
    ls = []
    for _ in range(3):
        with _Clock() as c:
            torch.log_softmax(z, dim=1)
        ls.append(c)
    ls_cpu, ls_wall = min(c.cpu for c in ls), min(c.wall for c in ls)
    with _Clock() as fit_c:
        fit = temperature_fit(z, y)
    z64 = z.double()
    z64 -= z64.max(dim=1, keepdim=True).values
    with _Clock() as pass_c:
        _grad_curv(z64, y, 1.0)
    del z64
    out: dict[str, Any] = {"shape": [n, k], "temperature": fit.temperature, "passes": fit.passes,
                           "fit_cpu_s": fit_c.cpu, "fit_wall_s": fit_c.wall, "log_softmax_cpu_s": ls_cpu,
                           "log_softmax_wall_s": ls_wall, "one_pass_cpu_s": pass_c.cpu,
                           "s_per_softmax": fit_c.cpu / ls_cpu, "s_per_softmax_wall": fit_c.wall / ls_wall,
                           "cpu_s_per_fit_pass": fit_c.cpu / max(fit.passes, 1)}
    if before:
        with _Clock() as old_c:
            t_old, passes_old = fit_temperature_before(z, y)
        out.update(before={"temperature": t_old, "passes": passes_old, "fit_cpu_s": old_c.cpu,
                           "fit_wall_s": old_c.wall, "s_per_softmax": old_c.cpu / ls_cpu,
                           "s_per_softmax_wall": old_c.wall / ls_wall,
                           "cpu_s_per_fit_pass": old_c.cpu / passes_old},
                   rel_diff_vs_before=fit.temperature / t_old - 1.0)
    return out


def _written() -> int:
    """Bytes this process has passed to ``write`` so far (Linux ``/proc/self/io`` ``wchar``, all threads)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar")


def _stage2_state(g: int, k: int, d: int) -> tuple[list[dict[str, Any]], list[Any], dict[str, torch.Tensor]]:
    """The engine's checkpoint content for G MiSLAS members at (K, D), as after one epoch: each member
    built by :func:`mislas.stage2.members.new_member` and stepped once (momentum exists), and the
    BN buffers of a ResNet-50 body (the shared part)."""
    from mislas.config import RunConfig, Stage2Config
    from mislas.data import ArraySplit, LTData
    from mislas.models import build_model
    from mislas.stage2.members import member_state, new_member

    counts = lt_class_counts(k, 1000, 100.0)
    one = ArraySplit(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))
    data = LTData(name="inat-shaped", num_classes=k, train=one, val=one, test=one, class_counts=tuple(counts),
                  image_size=1, in_channels=1, mean=(0.5,), std=(0.25,), fingerprint="0" * 64)
    cfgs = [RunConfig(stage2=Stage2Config(epochs=30, eps_1=0.1 + 0.1 * i, eps_k=0.0)) for i in range(g)]
    torch.manual_seed(0)
    stage1_head = nn.Linear(d, k)
    states = []
    for i, cfg in enumerate(cfgs):
        m = new_member(i, cfg, stage1_head, data)
        x, y = torch.randn(8, d), torch.randint(0, k, (8,))
        torch.autograd.backward(m.loss_fn(m.head(x), y))
        m.optimizer.step()
        m.scheduler.step()
        states.append(member_state(m))
    body = build_model("resnet50", k, 3, None, load_pretrained=False).body
    return states, cfgs, dict(body.named_buffers())


def bench_checkpoint(k: int = INAT_CLASSES, d: int = 2048, gs: tuple[int, int] = (1, 2)) -> dict[str, Any]:
    """Bytes written per Stage-2 epoch for G members at (K, D), measured (``/proc/self/io`` wchar).

    One epoch's checkpoint path, run for real on files: the engine's write
    (:func:`mislas.checkpoint.save_stage2`, the payload the engine writes), then what the
    report does with it. Before (the trial reported its work folder, state included): Tune's
    persist copies the folder (``pyarrow.fs.copy_files``, what
    ``StorageContext.persist_current_checkpoint`` runs). After: :class:`study.engine_state.EngineState`
    moves the state into the store (a rename) and Tune copies the reported folder, which holds the
    pointer. Per member: the difference between G = 2 and G = 1 (the shared BN buffers cancel).
    """
    import tempfile

    from mislas import checkpoint
    from study.engine_state import EngineState

    def epoch_bytes(g: int, root: Path) -> dict[str, int]:
        states, cfgs, buffers = _stage2_state(g, k, d)
        out = {}
        for how in ("before", "after"):
            trial = root / f"{how}-g{g}"
            reported, persisted = trial / "work", trial / "tune-checkpoint"
            engine = EngineState(str(trial / "results"), "t0", trial / "scratch")
            engine.start(reported.parent / "nothing-restored")
            state_dir = (reported / "engine" if how == "before" else engine.work) / "sub0"
            state_dir.mkdir(parents=True, exist_ok=True)
            reported.mkdir(exist_ok=True)
            w0 = _written()
            checkpoint.save_stage2(state_dir / checkpoint.STAGE2, epoch=1, members=states, body_buffers=buffers,
                                   cfgs=cfgs, fingerprint="0" * 64)
            if how == "after":
                engine.publish(1, reported)
            persisted.mkdir()  # Tune's persist of the reported folder: create_dir, then copy_files
            pafs.copy_files(str(reported), str(persisted))
            out[how] = _written() - w0
            out[f"{how}_file"] = sum(f.stat().st_size for f in trial.rglob("*.pt")) // (2 if how == "before" else 1)
            shutil.rmtree(trial)
        return out

    with tempfile.TemporaryDirectory(prefix="mislas-ckpt-bench-") as tmp:
        one, two = (epoch_bytes(g, Path(tmp)) for g in gs)
    per_member = {how: (two[how] - one[how]) // (gs[1] - gs[0]) for how in ("before", "after")}
    return {"k": k, "d": d, "gs": list(gs), "bytes_per_epoch": {f"g{gs[0]}": one, f"g{gs[1]}": two},
            "per_member": per_member, "state_bytes_per_member": (two["after_file"] - one["after_file"]),
            "kxd_fp32_bytes": k * d * 4}


def paper_scale(*, before: bool = False) -> dict[str, Any]:
    """Both benchmarks, with the figures issue 16 names at the top level."""
    st = bench_stacked(before=before)
    tf = bench_temperature(before=before)
    ck = bench_checkpoint()
    flat: dict[str, Any] = {
        "stacked_vs_loop_2048x1000_g16": st["stacked_vs_loop"],
        "stacked_peak_copies_2048x1000_g16": st["peak_copies"]["stacked"],
        "loop_peak_copies_2048x1000_g16": st["peak_copies"]["loop"],
        "tf_passes_inat": tf["passes"],
        "tf_s_per_softmax_inat": tf["s_per_softmax"],
        "ckpt_bytes_per_epoch_per_member_inat": ck["per_member"]["after"],
        "ckpt_bytes_per_epoch_per_member_inat_before": ck["per_member"]["before"],
    }
    if before:
        flat.update({
            "stacked_vs_loop_2048x1000_g16_before": st["stacked_before_vs_loop"],
            "stacked_peak_copies_2048x1000_g16_before": st["peak_copies"]["stacked_before"],
            "tf_passes_inat_before": tf["before"]["passes"],
            "tf_s_per_softmax_inat_before": tf["before"]["s_per_softmax"],
        })
    return {**flat, "stacked": st, "temperature": tf, "checkpoint": ck}
