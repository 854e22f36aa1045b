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
