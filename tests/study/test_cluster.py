"""What a driver or a node without the study's packages, or a cluster that refuses the driver,
gets: one line and exit status 3, before anything is written to the storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from study import nodecheck

REPO = Path(__file__).resolve().parents[2]

BLOCK_TORCH = (
    "import runpy, sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv = ['study.run', *sys.argv[1:]]\n"
    "runpy.run_module('study.run', run_name='__main__')\n"
)


def test_missing_here_names_only_what_cannot_be_imported() -> None:
    assert nodecheck.missing_here(["json", "no_such_module_xyz", "os", "no.such.pkg"]) == [
        "no_such_module_xyz", "no.such.pkg"]


def test_a_node_message_names_the_node_the_packages_and_the_fix() -> None:
    line = nodecheck.message({"missing": ["torch", "yaml"], "python": "/usr/bin/python3", "hostname": "vm",
                              "node_id": "ab" * 28, "node_ip": "10.0.0.7"})
    assert "\n" not in line
    assert line.startswith("node 10.0.0.7 (Ray node abababababab, Python /usr/bin/python3) cannot import torch, yaml")
    assert "install pyyaml torch into that Python" in line and "ray start" in line


def test_a_driver_without_torch_fails_with_one_line_and_exit_3(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    storage = tmp_path / "st"
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "--dataset", "fashion_mnist_lt", "--storage",
                           str(storage)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == nodecheck.EXIT_NODE, (proc.stdout, proc.stderr[-2000:])
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"python -m study.run: error: this Python ({sys.executable}, on ")
    assert "cannot import torch, torchvision: install torch torchvision into it" in line
    assert not storage.exists()


@pytest.mark.parametrize("modules", [None, ["json"]])
def test_check_driver_passes_in_this_venv(modules: list[str] | None) -> None:
    nodecheck.check_driver(modules)  # this venv has everything: no exception
    with pytest.raises(nodecheck.NodeDependencyError, match="cannot import no_such_module_xyz: install "
                                                             "no_such_module_xyz into it"):
        nodecheck.check_driver(["json", "no_such_module_xyz"])


def test_a_trial_given_a_gpu_cuda_cannot_see_fails_with_one_line() -> None:
    import torch

    from study.trainable import trial_device

    if torch.cuda.is_available():
        pytest.skip("CUDA is visible here")
    assert trial_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError) as info:
        trial_device("cuda")
    line = str(info.value)
    assert "\n" not in line and line.startswith("this trial was given a GPU on node ")
    assert "torch.cuda.is_available() is False" in line and line.endswith(
        "run with --gpus-per-trial 0 (CPU), or on nodes whose torch sees their GPUs")


def test_rows_say_which_node_ran_them() -> None:
    from datetime import datetime, timezone

    from study.outcome import MemberOutcome, trial_row
    from study.records import TrialSpec

    spec = TrialSpec(dataset="places_lt", method="crt", mixup=False, seed=0)
    outcome = MemberOutcome(trial_id="t0", started_at="2026-12-06T20:00:00+00:00", epochs_planned=2, epochs_run=2,
                            final=True, hostname="vm", node_id="f" * 56, node_ip="10.0.0.2", device_name="cpu (2)")
    row = trial_row(spec, 0, "t0", "t0", outcome, last={}, study="s", budget="smoke", imb_factor=100.0,
                    epochs_planned=2, error=None, fallback_versions={}, fallback_commit=None,
                    now=datetime.now(timezone.utc))
    assert (row["hostname"], row["node_id"], row["node_ip"]) == ("vm", "f" * 56, "10.0.0.2")
    assert row["status"] == "complete"


def test_data_parallel_stage1_on_gpus_cuda_cannot_see_is_refused_before_training() -> None:
    """A Ray node declaring a logical GPU on a machine without CUDA (as ``ray start --num-gpus``):
    the probe runs where a Stage-1 worker would and refuses with one line, no "rerun" hint."""
    import ray
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is visible here")
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False)
    try:
        nodecheck.check_stage1_gpus(2, 0.0)  # no GPUs asked: nothing to check
        with pytest.raises(nodecheck.NodeDependencyError) as info:
            nodecheck.check_stage1_gpus(2, 1.0)
    finally:
        ray.shutdown()
    line = str(info.value)
    assert "\n" not in line and "rerun" not in line.lower()
    assert line.startswith("--stage1-workers 2 --stage1-gpus-per-worker 1: data-parallel Stage 1 on GPUs needs "
                           "NCCL on visible GPUs; a worker was given a GPU on node ")
    assert "run with --stage1-gpus-per-worker 0 (CPU workers)" in line
