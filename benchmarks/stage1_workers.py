"""Stage 1 on one process vs N data-parallel processes: training time and accuracy.

    python -m benchmarks.stage1_workers [--workers 2] [--epochs 8] [--n-max 700] [--device cpu]

The recipe is the main job's (scripts/main.sh: Fashion-MNIST-LT, β 100, n_max 700, a mixup
Stage 1 of 8 epochs, Table 6's CIFAR-10-LT row otherwise). The N-process run is what the
study's ``--stage1-workers N`` runs inside Ray Train (mislas.stages.fit_stage1 in a
torch.distributed group; gloo on the CPU, NCCL on GPUs), started here with
torch.multiprocessing so that Ray's own start-up is not in the figure. Each process gets
``--threads`` threads (the study gives each worker ``--cpus-per-trial``). Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mislas.config import RunConfig, apply_overrides, preset_config
from mislas.stages import evaluate_stage1, fit_stage1
from mislas.train import load_data

FMNIST = "/usr/share/datasets/fashion-mnist"


def recipe(epochs: int, n_max: int, data_root: str) -> RunConfig:
    cfg = preset_config("paper", "fashion_mnist_lt")
    return apply_overrides(cfg, [f"data.data_root={data_root}", f"data.n_max={n_max}", "data.val_per_class=50",
                                 f"stage1.epochs={epochs}", "stage1.mixup=true",
                                 "stage1.warmup_epochs=1", f"stage1.milestones=({max(epochs - 2, 1)},{epochs - 1})"])


def _train(cfg: RunConfig, threads: int, device: str, out: Path | None) -> dict[str, Any]:
    torch.set_num_threads(threads)
    data = load_data(cfg)
    t0 = time.perf_counter()
    model, records = fit_stage1(data, cfg, device=torch.device(device), progress=False)
    fit_s = time.perf_counter() - t0
    result: dict[str, Any] = {"fit_s": fit_s, "steps_per_epoch": records[-1].steps}
    if not dist.is_initialized() or dist.get_rank() == 0:
        res = evaluate_stage1(model, data, cfg, torch.device(device), records)
        result |= {"val_acc": res.val.summary()["acc"], "test_acc": res.test.summary()["acc"],
                   "test_ece": res.test.summary()["ece"], "final_loss": records[-1].train_loss}
        if out is not None:
            out.write_text(json.dumps(result))
    return result


def _rank(rank: int, world: int, store: str, cfg: RunConfig, threads: int, device: str, out: str) -> None:
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _train(cfg, threads, f"cuda:{rank}" if backend == "nccl" else device, Path(out))
    finally:
        dist.destroy_process_group()


def run(cfg: RunConfig, workers: int, threads: int, device: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    if workers == 1:
        result = _train(cfg, threads, device, None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rank0.json"
            mp.spawn(_rank, args=(workers, str(Path(tmp) / "store"), cfg, threads, device, str(out)), nprocs=workers)
            result = json.loads(out.read_text())
    return {"workers": workers, "threads": threads, "wall_s": time.perf_counter() - t0, **result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="data-parallel processes of the second run (default 2)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-max", type=int, default=700)
    p.add_argument("--threads", type=int, default=1, help="threads per process (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per worker)")
    p.add_argument("--data-root", default=FMNIST)
    args = p.parse_args(argv)
    cfg = replace(recipe(args.epochs, args.n_max, args.data_root), device=args.device.split(":")[0])
    print(f"Stage 1: Fashion-MNIST-LT n_max {args.n_max}, {args.epochs} epochs, batch {cfg.stage1.batch_size} "
          f"(global), mixup {cfg.stage1.mixup}; {os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    rows = [run(cfg, 1, args.threads, args.device), run(cfg, args.workers, args.threads, args.device)]
    print("| workers | threads each | train s | wall s | steps/epoch/worker | final loss | val acc | test acc | "
          "test ECE |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['workers']} | {r['threads']} | {r['fit_s']:.1f} | {r['wall_s']:.1f} | {r['steps_per_epoch']} | "
              f"{r['final_loss']:.3f} | {r['val_acc']:.2f} | {r['test_acc']:.2f} | {r['test_ece']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
