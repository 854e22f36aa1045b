"""Ray's fixed costs as the study meets them: start-up, shutdown, and Ray Train's controller.

    python -m benchmarks.ray_overheads [--repeats 3] [--num-cpus 2]

- **start-up**: ``study.runtime.init_ray(None, num_cpus)``, the in-process ``ray.init`` a study
  starts with (``summary.json``'s ``timings.ray_init_s``), and ``ray.shutdown()``; in a fresh
  Python each time, after ``import ray`` (not counted).
- **Ray Train controller**: the same trivial body (import torch, report once) as a one-CPU Ray
  task and as a one-worker ``TorchTrainer`` (gloo on the CPU), what ``study.stage1_phase``
  chooses between for a one-worker Stage 1. The controller's cost is the trainer's wall time
  minus the task's; each repeat after the first finds the task's worker process warm, as a
  study's later Stage 1s do, while every ``fit()`` starts its controller and worker actors anew.

Prints one JSON object (seconds: each repeat, and the median); the load average before and
after, since these figures scale with it on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

START = """
import json, sys, time
import ray
from study.runtime import init_ray
started, init_s = init_ray(None, int(sys.argv[1]))
t0 = time.perf_counter()
ray.shutdown()
print(json.dumps({"init_s": init_s, "shutdown_s": time.perf_counter() - t0}))
"""


def start_up(repeats: int, num_cpus: int) -> dict[str, Any]:
    """``init_ray`` and ``ray.shutdown`` in ``repeats`` fresh processes."""
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", START, str(num_cpus)], capture_output=True, text=True,
                              timeout=300, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        if proc.returncode != 0:
            raise SystemExit(f"ray start-up probe failed: {proc.stderr[-2000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    init, shut = [r["init_s"] for r in runs], [r["shutdown_s"] for r in runs]
    return {"ray_init_s": init, "ray_init_median_s": statistics.median(init), "ray_shutdown_s": shut,
            "ray_shutdown_median_s": statistics.median(shut)}


def _body() -> dict[str, Any]:
    import torch

    return {"threads": torch.get_num_threads()}


def _train_loop(config: dict[str, Any]) -> None:
    import ray.train

    ray.train.report(_body())


def _fit(name: str, runs: str) -> None:
    """As study.stage1_phase's ``_trainer_body``: a TorchTrainer started from a (zero-CPU) Ray task."""
    import ray.train
    from ray.train.torch import TorchTrainer

    TorchTrainer(_train_loop, scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False,
                                                                     resources_per_worker={"CPU": 1}),
                 run_config=ray.train.RunConfig(name=name, storage_path=runs)).fit()


def controller(repeats: int, num_cpus: int) -> dict[str, Any]:
    """A one-worker TorchTrainer against a one-CPU Ray task running the same body."""
    import ray

    from study.runtime import init_ray

    init_ray(None, num_cpus)
    task = ray.remote(num_cpus=1)(_body)
    fit = ray.remote(num_cpus=0, max_retries=0)(_fit)
    task_s, trainer_s = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="ray-overheads-") as runs:
            for i in range(repeats):
                t0 = time.perf_counter()
                ray.get(task.remote())
                task_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ray.get(fit.remote(f"probe-{i}", runs))
                trainer_s.append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    overhead = [b - a for a, b in zip(task_s, trainer_s)]
    return {"task_s": task_s, "trainer_s": trainer_s, "controller_s": overhead,
            "controller_median_s": statistics.median(overhead)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_overheads", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args(argv)
    import ray

    out: dict[str, Any] = {"ray_version": ray.__version__, "cpus": os.cpu_count(), "num_cpus": args.num_cpus,
                           "repeats": args.repeats, "load_before": os.getloadavg()[0]}
    out.update(start_up(args.repeats, args.num_cpus))
    out.update(controller(args.repeats, args.num_cpus))
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else [round(x, 2) for x in v]
                          if isinstance(v, list) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
