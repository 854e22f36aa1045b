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

- The Parquet union of a study's parts (:func:`study.results.rebuild_unions`): seconds per
  1,000 parts at K = 100 classes (each part: 1 trials row, 30 epochs, 100 classes, 2 × 15
  reliability bins, 2 × 4 confidence rows; no per-image predictions), and the peak memory while
  writing (the same RSS window), for ``union_parts`` parts on a local folder.

``before=True`` also runs the implementations issue 16 replaced (:mod:`benchmarks.legacy`) in
the same process, interleaved, for the before/after figures.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from benchmarks.legacy import StackedHeadsBefore, fit_temperature_before, rebuild_unions_before
from benchmarks.synthetic import trained_logits
from mislas.calibration import _grad_curv, temperature_fit, temperature_scaled_results
from mislas.config import EvalConfig
from mislas.data import lt_class_counts
from mislas.las import LabelAwareSmoothing
from mislas.models import Network, ScaledClassifier
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


def synthetic_parts(root: Path, n: int, k: int = 100, *, epochs: int = 30, seed: int = 0) -> Any:
    """``n`` complete parts of a K-class study under ``root`` (a :class:`study.storage.Store`), the
    files written directly (no fsync: the union reads them as the driver's)."""
    import numpy as np
    import pyarrow.parquet as pq

    from study import results
    from study.storage import Store

    store = Store(str(root))
    rng = np.random.default_rng(seed)
    counts = list(lt_class_counts(k, 500, 100.0))
    third = k // 3
    splits = {"many": list(range(third)), "medium": list(range(third, 2 * third)), "few": list(range(2 * third, k))}
    for i in range(n):
        tid = f"t{i:05d}"
        acc = rng.uniform(30, 60, k)
        bins = [{"lower": b / 15, "upper": (b + 1) / 15, "count": int(c), "accuracy": float(a), "confidence": b / 15}
                for b, (c, a) in enumerate(zip(rng.integers(0, 500, 15), rng.uniform(0, 1, 15)))]
        quant = {s: {"count": 10, "mean": 0.5, "q05": 0.1, "q25": 0.3, "q50": 0.5, "q75": 0.7, "q95": 0.9}
                 for s in ("all", *splits)}
        tables = {
            "trials": results.table("trials", [{"trial_id": tid, "study": "bench", "dataset": "cifar100_lt",
                                                "method": "mislas", "mixup": True, "seed": 0, "status": "complete",
                                                "val_acc": float(acc.mean()), "epochs_planned": epochs,
                                                "epochs_run": epochs}]),
            "epochs": results.table("epochs", results.epochs_rows(tid, [
                {"epoch": e, "lr": 0.1, "classifier_lr": 0.05, "train_loss": 2.0, "wall_s": 1.0,
                 "val": {"acc": float(acc.mean()), "ece": 5.0}} for e in range(1, epochs + 1)])),
            "classes": results.table("classes", results.classes_rows(tid, counts, splits, acc, acc, acc, acc)),
            "reliability": results.table("reliability", results.reliability_rows(tid, {"val": bins, "test": bins})),
            "confidence": results.table("confidence", results.confidence_rows(tid, {"val": quant, "test": quant})),
        }
        folder = root / results.PARTS / tid
        folder.mkdir(parents=True)
        for name in ("epochs", "classes", "reliability", "confidence", "trials"):
            pq.write_table(tables[name], folder / f"{name}.parquet")
    return store


def bench_union(n_parts: int = 1000, k: int = 100, *, before: bool = False) -> dict[str, Any]:
    """Seconds and peak memory (bytes above the RSS at the start) of writing the unions of
    ``n_parts`` K-class parts, streaming (and, ``before``, the old whole-table writer, on the
    same parts), with the union's rows."""
    import shutil
    import tempfile

    from study import results

    root = Path(tempfile.mkdtemp(prefix="union-bench-"))
    try:
        t0 = time.perf_counter()
        store = synthetic_parts(root, n_parts, k)
        out: dict[str, Any] = {"parts": n_parts, "K": k, "make_parts_s": time.perf_counter() - t0}
        kinds: dict[str, Callable[[], Any]] = {"after": lambda: results.rebuild_unions(store)}
        if before:
            kinds = {"before": lambda: rebuild_unions_before(store), **kinds}
        for name, fn in kinds.items():
            rows: dict[str, int] = {}
            clock = _Clock()

            def window(fn: Callable[[], Any] = fn, rows: dict[str, int] = rows, clock: _Clock = clock) -> None:
                with clock:
                    rows.update(fn())

            peak = peak_window(window)
            out[name] = {"s": clock.wall, "cpu_s": clock.cpu, "s_per_1k_parts": clock.wall * 1000 / n_parts,
                         "peak_bytes": peak, "rows": rows}
        out["union_bytes"] = sum((root / f"{t}.parquet").stat().st_size for t in results.TABLES)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
EvalInputs = tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]], Network,
                   list[nn.Module], list[int]]


def eval_inputs(n: int, k: int, d: int, g: int, batch: int) -> EvalInputs:
    """Inputs of :func:`bench_eval`: val and test batches, an identity backbone, G heads, counts.

    Trained-looking D-dim features (a class prototype plus noise, the prototype of the label for
    65 % of rows), G linear heads D → K on the prototypes (each its own logit scale) and
    long-tailed training counts.
    """
    gen = torch.Generator().manual_seed(0)
    proto = torch.nn.functional.normalize(torch.randn(k, d, generator=gen), dim=1)

    def split(rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        y = torch.randint(0, k, (rows,), generator=gen)
        target = torch.where(torch.rand(rows, generator=gen) < 0.65, y, torch.randint(0, k, (rows,), generator=gen))
        x = proto[target] * 4.0 + torch.randn(rows, d, generator=gen) / d**0.5
        return [(x[s:s + batch], y[s:s + batch]) for s in range(0, rows, batch)]

    heads: list[nn.Module] = []
    for i in range(g):
        head = nn.Linear(d, k)
        with torch.no_grad():
            head.weight.copy_(proto * (2.0 + 0.5 * i))
            head.bias.zero_()
        heads.append(head)
    return split(n), split(n), Network(nn.Identity(), d, k), heads, lt_class_counts(k, 1000, 500.0)


def _measured(run: Callable[[], Any], g: int) -> dict[str, float]:
    """Peak extra RSS (total and ÷ G) and CPU / wall seconds of one call of ``run``."""
    clock = _Clock()

    def timed() -> None:
        with clock:
            run()

    peak = peak_window(timed)
    return {"peak_bytes": peak, "bytes_per_member": peak / g, "cpu_s": clock.cpu, "wall_s": clock.wall}


def _fix_mmap_threshold(size: int = 128 << 10) -> None:
    """glibc: serve every allocation of ``size`` or more by mmap, returned to the system when freed.

    By default glibc raises its mmap threshold to the size of each freed mapping (up to 32 MB),
    after which evaluation's 4–33 MB temporaries come from the heap, whose freed pages the RSS
    keeps: the peak then counts fragmentation, not live tensors. A fixed threshold (``mallopt``,
    which also stops the adjustment) makes the RSS follow the live tensors again.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, size)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _eval_runs(n: int, k: int, d: int, g: int, batch: int, before: bool) -> tuple[dict[str, Callable[[], Any]], float]:
    """The calls :func:`bench_eval` measures at ``n`` rows, and the CPU seconds of one head pass over val."""
    from mislas.metrics import evaluate_logits
    from mislas.stages import predict_heads
    from mislas.streaming import stream_evaluate, stream_final_evaluation

    cpu = torch.device("cpu")
    val, test, backbone, heads, counts = eval_inputs(n, k, d, g, batch)
    evals = [EvalConfig()] * g
    with _Clock() as lc, torch.no_grad():
        for x, _ in val:
            for h in heads:
                h(x)

    def host_eval() -> None:  # mislas.stages.evaluate_heads' body
        logits, labels = predict_heads(backbone, heads, val, cpu, False)
        for lg in logits:
            evaluate_logits(lg, labels, counts)

    def host_final() -> None:  # mislas.stages.final_evaluation's body
        lv, yv = predict_heads(backbone, heads, val, cpu, False)
        lt, yt = predict_heads(backbone, heads, test, cpu, False)
        for a, b in zip(lv, lt):
            evaluate_logits(a, yv, counts)
            evaluate_logits(b, yt, counts)
            temperature_scaled_results(a, yv, b, yt, counts)

    runs: dict[str, Callable[[], Any]] = {
        "eval": lambda: stream_evaluate(backbone, heads, val, counts, evals, device=cpu, channels_last=False),
        "final": lambda: stream_final_evaluation(backbone, heads, val, test, counts, evals, device=cpu,
                                                 channels_last=False),
    }
    if before:
        runs.update(eval_before=host_eval, final_before=host_final)
    return runs, lc.cpu


def bench_eval(n: int = INAT_VAL // 8, k: int = INAT_CLASSES, d: int = 2048, *, g: int = 2, batch: int = 512,
               before: bool = False) -> dict[str, Any]:
    """:func:`bench_eval_here` in a fresh interpreter, with this process's intra-op thread count.

    Why: after the other benchmarks, this process's heap holds large free regions that later
    allocations are carved from page by page, so its RSS grows with every batch whatever is
    live (measured: the streamed evaluation's peak then grew 85 MB per member from 1,017 to 3,053 rows,
    against none in a fresh process); a fresh heap measures the tensors.
    """
    args = {"n": n, "k": k, "d": d, "g": g, "batch": batch, "before": before}
    code = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            "from benchmarks.paper_scale import bench_eval_here; "
            "print(json.dumps(bench_eval_here(**json.loads(sys.argv[2]))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code, str(torch.get_num_threads()), json.dumps(args)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench_eval's fresh interpreter failed (exit {done.returncode}): {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def bench_eval_here(n: int = INAT_VAL // 8, k: int = INAT_CLASSES, d: int = 2048, *, g: int = 2, batch: int = 512,
                    before: bool = False) -> dict[str, Any]:
    """Host bytes and time of evaluating G heads at iNaturalist's shape, host path against streamed.

    Today's path (``before``) against :mod:`mislas.streaming`, both on the CPU (so the
    "device" is the host here).

    Inputs from :func:`eval_inputs`, ``n`` val and ``n`` test rows in batches of ``batch``.
    Two calls each: the per-epoch evaluation (``evaluate_heads``: val) and the final one (val,
    test, temperature scaling). Bytes: the peak RSS over the call minus the RSS at its start
    (:func:`peak_window`, with :func:`_fix_mmap_threshold`; features, heads and labels exist
    before), ÷ G, measured at ``n`` and ``n // 3`` rows and extrapolated linearly to
    iNaturalist's 24,426 (the host path's bytes grow as N: N×K float32 logits; the streaming
    path's hardly: per-sample vectors, 25 bytes per row and result; a growth below 0, noise
    on a flat figure, counts as 0). Time: CPU seconds of the
    calls at ``n`` (:class:`_Clock`), with ``logits_cpu_s``, one pass of the heads over the
    val rows without metrics, which both paths pay (twice in the final evaluation).
    """
    from mislas.streaming import held_bytes

    _fix_mmap_threshold()
    sizes = (n // 3, n)
    measured: dict[int, dict[str, dict[str, float]]] = {}
    logits_cpu = 0.0
    for rows in sizes:
        runs, logits_cpu = _eval_runs(rows, k, d, g, batch, before)
        measured[rows] = {name: _measured(run, g) for name, run in runs.items()}

    def at_inat(name: str) -> float:
        small, large = (measured[r][name]["bytes_per_member"] for r in sizes)
        growth = max(large - small, 0.0) / (sizes[1] - sizes[0])  # a flat figure's noise must not shrink it
        return large + growth * (INAT_VAL - sizes[1])

    big = measured[n]
    out: dict[str, Any] = {
        "shape": {"N": list(sizes), "K": k, "D": d, "G": g, "B": batch}, "logits_cpu_s": logits_cpu,
        "measured": measured, "extrapolated_to_n": INAT_VAL,
        "host_bytes_per_member": at_inat("eval"),
        "final_host_bytes_per_member": at_inat("final"),  # on the CPU it holds the val logits: host memory here
        "held_device_bytes_per_member_inat": held_bytes(INAT_VAL, k, 1),
        "host_bytes_per_member_on_gpu_inat": {"eval": 25 * INAT_VAL, "final": 4 * 25 * INAT_VAL},
    }
    if before:
        out.update(host_bytes_per_member_before=at_inat("eval_before"),
                   final_host_bytes_per_member_before=at_inat("final_before"),
                   eval_cpu_s_ratio=big["eval_before"]["cpu_s"] / big["eval"]["cpu_s"],
                   final_cpu_s_ratio=big["final_before"]["cpu_s"] / big["final"]["cpu_s"])
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
    """Every paper-scale benchmark, with the figures issue 16 names at the top level."""
    st = bench_stacked(before=before)
    tf = bench_temperature(before=before)
    un = bench_union(before=before)
    ev = bench_eval(before=before)
    ck = bench_checkpoint()
    flat: dict[str, Any] = {
        "stacked_vs_loop_2048x1000_g16": st["stacked_vs_loop"],
        "stacked_peak_copies_2048x1000_g16": st["peak_copies"]["stacked"],
        "loop_peak_copies_2048x1000_g16": st["peak_copies"]["loop"],
        "tf_passes_inat": tf["passes"],
        "tf_s_per_softmax_inat": tf["s_per_softmax"],
        "union_s_per_1k_parts_k100": un["after"]["s_per_1k_parts"],
        "union_peak_bytes_k100": un["after"]["peak_bytes"],
        "eval_host_bytes_per_member_inat": ev["host_bytes_per_member"],
        "ckpt_bytes_per_epoch_per_member_inat": ck["per_member"]["after"],
        "ckpt_bytes_per_epoch_per_member_inat_before": ck["per_member"]["before"],
    }
    if before:
        flat.update({
            "stacked_vs_loop_2048x1000_g16_before": st["stacked_before_vs_loop"],
            "stacked_peak_copies_2048x1000_g16_before": st["peak_copies"]["stacked_before"],
            "tf_passes_inat_before": tf["before"]["passes"],
            "tf_s_per_softmax_inat_before": tf["before"]["s_per_softmax"],
            "union_s_per_1k_parts_k100_before": un["before"]["s_per_1k_parts"],
            "union_peak_bytes_k100_before": un["before"]["peak_bytes"],
            "eval_host_bytes_per_member_inat_before": ev["host_bytes_per_member_before"],
        })
    return {**flat, "stacked": st, "temperature": tf, "union": un, "eval": ev, "checkpoint": ck}
