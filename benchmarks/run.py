"""``python -m benchmarks.run [--device cpu|cuda] [--quick]``: speed of the library's paths, measured.

Five measurements, all in this one process on one device, so their ratios are fair even on a
shared machine (absolute numbers drift by ±20 % there; ratios much less):

1. Stage 1 training images/s, ResNet-32, batch 128, mixup, CIFAR-shaped data (12,406 32x32x3
   images, CIFAR-10-LT β=100): the reference-style loop (:mod:`benchmarks.reference`:
   DataLoader + PIL + transforms v1, fp32, contiguous; with 0 workers and with the "auto"
   count, the faster is the baseline) against the library's fast path (:mod:`mislas.fastpath`
   + :func:`mislas.stages.run_epoch`, channels_last, bf16 autocast on CUDA). Also the fast
   path in fp32 contiguous, which separates the data path's gain from the memory format's.
   Steady state: warm-up steps first, then short turns of the variants, interleaved, over
   many rounds. ``stage1_speedup`` = fast path / best reference, each the mean of its
   fastest quarter of turns (see :func:`top_quartile_mean`; median and best turn reported too).
2. Stage 2, 32 MiSLAS trials differing in ε_1, ε_K, form, ΔW ratio and lr: one epoch of the
   grouped run (:func:`mislas.stages.train_stage2_group`, stacked heads; also with heads one
   by one) against one epoch of a few trials run alone (:func:`mislas.stages.train_stage2`),
   interleaved; one-by-one time = 32 × the fastest single epoch (extrapolated), against the
   fastest grouped epoch. Each epoch includes its validation pass, as in training.
3. ``study_speedup``: an N-trial study (N = the group size) on CIFAR-10-LT β=100 at Table 6's
   budget (200 + 10 epochs), *extrapolated* from the measured rates: N independent two-stage
   runs (reference-style Stage 1, each trial's Stage 2 alone) against one shared fast-path
   Stage 1 and one grouped Stage 2.
4. Image-list decoding: JPEG decode + the ImageNet train transform through
   :func:`mislas.data.make_loader`, images/s, on a generated tree of 500x375 JPEGs; with
   ``--device cuda`` (or without ``--quick``) also ResNet-50 training images/s, to show
   whether the loader or the model is the limit.

5. ``--parts paper_scale`` (not in the default parts; CPU): issue 16's figures at the sizes the
   product exists for (:mod:`benchmarks.paper_scale`): stacked heads against one by one at
   D = 2048, K = 1000, G = 16 (time and peak copies of G×K×D), the temperature fit on
   iNaturalist-shaped logits (passes, time ÷ one log-softmax). ``--before`` adds the replaced
   implementations, side by side in the same process.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from benchmarks import paper_scale, synthetic
from benchmarks.reference import PILArrayDataset, reference_loader, reference_steps
from mislas import fastpath, stages
from mislas.config import RunConfig, Stage1Config, Stage2Config
from mislas.data import make_loader, train_transform
from mislas.data.loaders import resolve_num_workers
from mislas.data.samplers import class_aware_epoch_steps
from mislas.models import build_model
from mislas.stages import train_stage2_group

T = TypeVar("T")
S1_IMAGES = 12_406  # CIFAR-10-LT β=100 train images
S1_EPOCHS, S2_EPOCHS = 200, 10  # Table 6, CIFAR
# Stage-2 steps per epoch on CIFAR-10-LT β=100, B=128: the reference's ceil(N/B) + 1 (default
# stage2.epoch_length) and the full sampler cycle K · n_max / B
S2_STEPS_CIFAR10 = {"reference": -(-S1_IMAGES // 128) + 1, "sampler": -(-10 * 5000 // 128)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cycle(iterable: Iterable[T]) -> Iterator[T]:
    """Endless batches: a new epoch (new iterator) whenever one runs out, as training does."""
    while True:
        yield from iterable


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "cpus": len(os.sched_getaffinity(0))}
    try:
        models = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")]
        info["cpu"] = models[0] if models else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["load_avg"] = list(os.getloadavg())
    return info


# --- 1. Stage 1 ---------------------------------------------------------------------------

def bench_stage1(device: torch.device, quick: bool) -> dict[str, Any]:
    cuda = device.type == "cuda"
    # short turns, many rounds, variants interleaved: a burst of load on a shared machine hits
    # one turn of one variant, and medians over rounds shrug it off
    warm, steps, repeats = (5, 10, 20) if cuda else (2, 1, 24) if quick else (3, 1, 48)
    data = synthetic.cifar_lt()
    lr = 0.01  # random labels: keep the steps finite; speed does not depend on it

    def model(channels_last: bool) -> nn.Module:
        torch.manual_seed(0)
        m = build_model("resnet32", data.num_classes).to(device)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    runners: dict[str, Any] = {}
    auto = resolve_num_workers("auto")
    ref_ds = PILArrayDataset(data.train.images, data.train.labels, data.mean, data.std)
    for workers in sorted({0, auto}):
        m = model(False)
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
        it = cycle(reference_loader(ref_ds, batch_size=128, num_workers=workers, pin_memory=cuda))

        def ref(k: int, m: nn.Module = m, opt: torch.optim.Optimizer = opt, it: Iterator[Any] = it) -> int:
            n = reference_steps(m, it, k, optimizer=opt, device=device)
            sync(device)
            return n

        runners[f"reference: DataLoader+PIL, fp32, contiguous, {workers} workers"] = ref

    for channels_last in (False, True):
        m = model(channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
        gen = torch.Generator().manual_seed(0)
        batches = fastpath.train_batches(data, device=device, sampler="instance", batch_size=128, generator=gen,
                                         channels_last=channels_last)
        it2 = cycle(batches)
        mix = stages.Mixup(1.0, seed=0)

        def fast(k: int, m: nn.Module = m, opt: torch.optim.Optimizer = opt, it: Iterator[Any] = it2,
                 mix: stages.Mixup = mix, cl: bool = channels_last) -> int:
            stages.run_epoch(m, islice(it, k), loss_fn=nn.functional.cross_entropy, optimizer=opt, device=device,
                             train_backbone=True, backbone_bn_train=True, mixup=mix, channels_last=cl)
            sync(device)
            return k * 128

        name = "fast path, " + ("channels_last" + (" + bf16 autocast" if cuda else "") if channels_last
                                else "fp32 contiguous")
        runners[name] = fast

    for run in runners.values():
        run(warm)
    ips: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            n = run(steps)
            ips[name].append(n / (time.perf_counter() - t0))
    refs = [k for k in ips if k.startswith("reference")]
    fast_name = [k for k in ips if k.startswith("fast path, channels_last")][0]
    contig = [k for k in ips if k == "fast path, fp32 contiguous"][0]
    top = {k: top_quartile_mean(vs) for k, vs in ips.items()}
    ref_ips = max(top[k] for k in refs)  # the faster reference is the baseline
    med = {k: statistics.median(vs) for k, vs in ips.items()}
    best = {k: max(vs) for k, vs in ips.items()}
    return {
        "ips": {k: [round(v, 1) for v in vs] for k, vs in ips.items()},
        "ips_top_quartile_mean": top, "ips_median": med, "ips_best": best,
        "steps_per_turn": steps, "rounds": repeats, "batch_size": 128,
        "stage1_speedup": top[fast_name] / ref_ips,
        "stage1_speedup_by_estimator": {
            "top_quartile_mean": top[fast_name] / ref_ips,
            "best_turn": best[fast_name] / max(best[k] for k in refs),
            "median": med[fast_name] / max(med[k] for k in refs),
        },
        "stage1_speedup_data_path_only": top[contig] / ref_ips,
        "ref_ips": ref_ips, "fast_ips": top[fast_name],
        "stage1_200ep_projected_s": S1_EPOCHS * S1_IMAGES / top[fast_name],
    }


def top_quartile_mean(values: list[float]) -> float:
    """Mean of the fastest quarter of the turns: the speed when no other process interfered.

    Why not the median: on a shared machine the load is bimodal (another job runs or not),
    so the median lands on whichever mode holds half the turns; timeit's rule (the fastest
    run is the least disturbed) is the robust one, averaged over a quarter of the turns so
    that one lucky turn does not decide.
    """
    ordered = sorted(values, reverse=True)
    k = max(1, len(ordered) // 4)
    return statistics.mean(ordered[:k])


# --- 2. Stage 2 ---------------------------------------------------------------------------

def stage2_configs(group: int, epoch_length: str = "reference") -> list[RunConfig]:
    """``group`` MiSLAS trials that differ in what a study searches (ε_1, ε_K, form, ΔW ratio, lr)."""
    forms = ("concave", "linear", "convex", "exp")
    base = RunConfig(stage1=Stage1Config(), stage2=Stage2Config(epochs=1, batch_size=128, shift_bn=True,
                                                                epoch_length=epoch_length),  # type: ignore[arg-type]
                     seed=0, channels_last=True)
    out = []
    for i in range(group):
        form = forms[i % 4]
        out.append(replace(base, stage2=replace(
            base.stage2, eps_1=0.1 + 0.3 * (i % 8) / 7, eps_k=0.05 * (i % 3), form=form,
            p=1.5 if form == "exp" else None, dw_ratio=(0.05, 0.1, 0.2, 0.5)[i // 8 % 4], lr=(0.05, 0.1)[i % 2])))
    return out


def bench_stage2(device: torch.device, quick: bool, group: int) -> dict[str, Any]:
    cuda = device.type == "cuda"
    # (n_max, trials timed alone, grouped runs); a GPU epoch at full size is quick
    n_max, singles, group_runs = (300, 4, 3) if quick and not cuda else (5000, 4, 2)
    data = synthetic.cifar_lt(n_max=n_max, eval_per_class=20 if quick and not cuda else 100)
    cfgs = stage2_configs(group)
    torch.manual_seed(0)
    model = stages.new_model(data, cfgs[0], device)
    stages.evaluate_split(model, data, "val", cfgs[0], device)  # warm-up: resident copies, kernels
    single: list[float] = []

    def one(i: int) -> None:
        res = stages.train_stage2(data, model, cfgs[i], device=device, progress=False)
        single.append(res.epochs[0].wall_s)

    # the same trial with the full sampler epoch (K · n_max samples, the length before the reference's)
    sampler_cfg = stage2_configs(1, "sampler")[0]
    sampler_s = [stages.train_stage2(data, model, sampler_cfg, device=device, progress=False).epochs[0].wall_s
                 for _ in range(2)]
    counts = list(data.class_counts)
    steps = {rule: class_aware_epoch_steps(rule, counts, 128) for rule in ("reference", "sampler")}

    groups: list[float] = []

    def grouped(vectorize: bool = True) -> float:
        res = train_stage2_group(data, model, cfgs, device=device, progress=False, vectorize=vectorize)
        return res[0].epochs[0].wall_s

    # interleaved, so that a burst of load on a shared machine does not land on one side only;
    # the fastest run of each kind is the least disturbed one (timeit's rule)
    for r in range(max(singles, group_runs)):
        if r < singles:
            one(r)
        if r < group_runs:
            groups.append(grouped())
        if r == 0:
            loop_s = grouped(vectorize=False)
    group_s = min(groups)
    mean_single = min(single)
    batches = steps["reference"]

    def head_ms(epoch_s: float) -> float:
        return (epoch_s - mean_single) / max(group - 1, 1) / batches * 1000

    return {
        "n_max": n_max, "train_images": sum(counts), "steps_per_epoch": steps, "group": group,
        "sampler_epoch_s": [round(s, 3) for s in sampler_s],
        "reference_vs_sampler_epoch": min(single) / min(sampler_s),
        "single_epoch_s": [round(s, 3) for s in single], "group_epoch_s": group_s,
        "group_epoch_s_runs": [round(g, 3) for g in groups], "group_loop_epoch_s": loop_s,
        "one_by_one_epoch_s_extrapolated": group * mean_single,
        "stage2_group_speedup": group * mean_single / group_s,
        "stage2_group_speedup_means": group * statistics.mean(single) / statistics.mean(groups),
        "stage2_group_speedup_unvectorised": group * mean_single / loop_s,
        "head_ms_per_trial_batch": head_ms(group_s), "head_ms_per_trial_batch_unvectorised": head_ms(loop_s),
        "scale_to_cifar10_lt": S2_STEPS_CIFAR10["reference"] / steps["reference"],
    }


# --- 3. the study, extrapolated -------------------------------------------------------------

def study(s1: dict[str, Any], s2: dict[str, Any]) -> dict[str, Any]:
    n, scale = s2["group"], s2["scale_to_cifar10_lt"]
    t1_ref, t1_fast = S1_IMAGES / s1["ref_ips"], S1_IMAGES / s1["fast_ips"]
    t2_single = min(s2["single_epoch_s"]) * scale
    t2_group = s2["group_epoch_s"] * scale
    independent = n * (S1_EPOCHS * t1_ref + S2_EPOCHS * t2_single)
    shared = S1_EPOCHS * t1_fast + S2_EPOCHS * t2_group
    sharing_only = n * (S1_EPOCHS * t1_fast + S2_EPOCHS * t2_single) / shared
    return {"trials": n, "independent_s": independent, "shared_s": shared, "study_speedup": independent / shared,
            "study_speedup_sharing_only": sharing_only, "extrapolated": True}


# --- 4. image lists -------------------------------------------------------------------------

def bench_decode(device: torch.device, quick: bool, with_model: bool) -> dict[str, Any]:
    images = 192 if quick else 768
    out: dict[str, Any] = {"images": images, "image_size": [500, 375], "ips": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic.jpeg_tree(Path(tmp), images=images)
        for workers in sorted({0, resolve_num_workers("auto")}):
            ld = make_loader(data.train, train_transform(data), batch_size=32, sampler="instance",
                             num_classes=data.num_classes, generator=torch.Generator().manual_seed(0),
                             num_workers=workers)
            for _ in ld:  # warm-up epoch: worker start-up is not decoding (workers persist)
                pass
            rates = []
            for _ in range(3):  # the fastest epoch is the least disturbed one
                t0 = time.perf_counter()
                n = sum(x.shape[0] for x, _ in ld)
                rates.append(n / (time.perf_counter() - t0))
            out["ips"][f"{workers} workers"] = max(rates)
            del ld
    out["list_decode_ips"] = max(out["ips"].values())
    if with_model:
        out["resnet50_train_ips"] = resnet50_ips(device)
        out["loader_limited"] = out["list_decode_ips"] < out["resnet50_train_ips"]
    return out


def resnet50_ips(device: torch.device) -> float:
    """ResNet-50 training images/s at 224x224 (channels_last, bf16 autocast on CUDA)."""
    from torchvision.models import resnet50

    cuda = device.type == "cuda"
    batch, warm, steps = (128, 3, 10) if cuda else (8, 1, 3)
    torch.manual_seed(0)
    m = resnet50(num_classes=1000).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    return training_ips(m, x, y, device, warm=warm, steps=steps,
                        autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda))


def training_ips(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, *, warm: int,
                 steps: int, autocast: Callable[[], AbstractContextManager[Any]]) -> float:
    """Training images/s of ``model`` on one fixed batch (SGD lr 0.01, momentum 0.9; forward under
    ``autocast``): ``warm`` untimed steps, then ``steps`` timed between device syncs."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warm):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return x.shape[0] * steps / (time.perf_counter() - t0)


# --- report ---------------------------------------------------------------------------------

def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="small budget (~2-3 min on a 2-core CPU)")
    parser.add_argument("--group", type=int, default=32, help="Stage-2 trials per group (default 32)")
    parser.add_argument("--parts", default="stage1,stage2,decode",
                        help="comma-separated subset of stage1,stage2,decode,paper_scale (study needs stage1 and "
                             "stage2; paper_scale, not in the default, runs on the CPU: issue 16's figures)")
    parser.add_argument("--before", action="store_true",
                        help="paper_scale: also time the implementations issue 16 replaced, side by side")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, one per core)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    unknown = parts - {"stage1", "stage2", "decode", "paper_scale"}
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; allowed: stage1, stage2, decode, paper_scale")
    t_start = time.perf_counter()
    info = machine(device)
    print(f"[bench] device {device} ({info.get('gpu', info['cpu'])}), {info['threads']} threads, "
          f"load {info['load_avg'][0]:.2f}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"device": str(device), "machine": info, "quick": args.quick}
    rows: list[tuple[str, str]] = []
    s1 = s2 = None
    if "stage1" in parts:
        s1 = bench_stage1(device, args.quick)
        print(f"[bench] stage 1 done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        rows += [(f"stage 1 img/s  {name}", f"fastest quarter {top_quartile_mean(vs):.0f}, median {statistics.median(vs):.0f}, best {max(vs):.0f}, worst {min(vs):.0f}") for name, vs in s1["ips"].items()]
        est = s1["stage1_speedup_by_estimator"]
        rows += [
            ("stage1_speedup (fastest quarter of turns)", f"{s1['stage1_speedup']:.2f}x  "
             f"(best turn {est['best_turn']:.2f}x, median {est['median']:.2f}x)"),
            ("  of which data path alone (fp32 contiguous)", f"{s1['stage1_speedup_data_path_only']:.2f}x"),
            ("stage 1, 200 epochs CIFAR-10-LT, projected", f"{s1['stage1_200ep_projected_s']:.0f} s"),
        ]
        result.update(stage1_speedup=round(s1["stage1_speedup"], 3), stage1=s1)
    if "stage2" in parts:
        s2 = bench_stage2(device, args.quick, args.group)
        print(f"[bench] stage 2 done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        rows += [
            (f"stage 2 epoch, one trial, reference length ({s2['steps_per_epoch']['reference']} steps)",
             " ".join(f"{v:.2f}" for v in s2["single_epoch_s"]) + " s"),
            (f"stage 2 epoch, one trial, full sampler cycle ({s2['steps_per_epoch']['sampler']} steps)",
             " ".join(f"{v:.2f}" for v in s2["sampler_epoch_s"]) + " s"),
            ("  reference / sampler epoch time", f"{s2['reference_vs_sampler_epoch']:.3f}"),
            (f"stage 2 epoch, {s2['group']} trials grouped (stacked heads)",
             " ".join(f"{v:.2f}" for v in s2["group_epoch_s_runs"]) + " s"),
            ("stage2_group_speedup (fastest runs; one-by-one extrapolated)", f"{s2['stage2_group_speedup']:.1f}x  "
             f"(from mean times {s2['stage2_group_speedup_means']:.1f}x)"),
            (f"stage 2 epoch, {s2['group']} trials grouped, heads one by one", f"{s2['group_loop_epoch_s']:.2f} s  "
             f"({s2['stage2_group_speedup_unvectorised']:.1f}x)"),
            ("  head cost per trial and batch: stacked / one by one",
             f"{s2['head_ms_per_trial_batch']:.3f} / {s2['head_ms_per_trial_batch_unvectorised']:.3f} ms"),
        ]
        result.update(stage2_group_speedup=round(s2["stage2_group_speedup"], 2), stage2=s2)
    if s1 is not None and s2 is not None:
        st = study(s1, s2)
        rows += [
            (f"study_speedup ({st['trials']} trials, extrapolated)", f"{st['study_speedup']:.1f}x  "
             f"({st['independent_s'] / 3600:.1f} h -> {st['shared_s'] / 3600:.2f} h)"),
            ("  of which sharing alone (same loop)", f"{st['study_speedup_sharing_only']:.1f}x"),
        ]
        result.update(study_speedup=round(st["study_speedup"], 2), study=st)
    if "decode" in parts:
        dec = bench_decode(device, args.quick, with_model=device.type == "cuda" or not args.quick)
        rows += [(f"list decode img/s  {k}", f"{v:.0f}") for k, v in dec["ips"].items()]
        if "resnet50_train_ips" in dec:
            rows.append(("resnet50 train img/s (the model's appetite)", f"{dec['resnet50_train_ips']:.1f}"))
        result.update(list_decode_ips=round(dec["list_decode_ips"], 1), decode=dec)
    if "paper_scale" in parts:
        ps = paper_scale.paper_scale(before=args.before)
        st, tf = ps["stacked"], ps["temperature"]
        rows += [
            ("stacked heads, D=2048 K=1000 G=16, s/step one by one / stacked",
             f"{min(st['step_s']['loop']):.3f} / {min(st['step_s']['stacked']):.3f}"),
            ("stacked_vs_loop_2048x1000_g16", f"{ps['stacked_vs_loop_2048x1000_g16']:.2f}x"),
            ("stacked_peak_copies_2048x1000_g16 (one by one)", f"{ps['stacked_peak_copies_2048x1000_g16']:.2f} "
             f"({ps['loop_peak_copies_2048x1000_g16']:.2f})"),
            (f"temperature fit {tf['shape'][0]}x{tf['shape'][1]}: tf_passes_inat, tf_s_per_softmax_inat",
             f"{tf['passes']}, {tf['s_per_softmax']:.1f} ({tf['fit_cpu_s']:.1f} CPU s)"),
        ]
        if args.before:
            rows += [
                ("  before: stacked_vs_loop, peak copies",
                 f"{ps['stacked_vs_loop_2048x1000_g16_before']:.2f}x, {ps['stacked_peak_copies_2048x1000_g16_before']:.2f}"),
                ("  before: tf passes, s per softmax", f"{tf['before']['passes']}, {tf['before']['s_per_softmax']:.1f} "
                 f"({tf['before']['fit_cpu_s']:.1f} CPU s)"),
            ]
        result.update(ps)
    info["load_avg_end"] = list(os.getloadavg())
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(table(rows))
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
