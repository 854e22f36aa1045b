"""The package as installed from its wheel, away from the repository: the search spaces ship as
package data, the console scripts are declared and resolve, the CLIs answer ``--help``.

The wheel is built from a copy of the sources (the repository's tree is left alone) without
network or build isolation, installed with ``pip --target`` into a temporary folder, and run
from outside the repository with ``PYTHONPATH`` at that folder (dependencies: this venv).
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.study.helpers import build_wheel, quiet_pip

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {"mislas-train": "mislas.train:main", "mislas": "mislas.__main__:main", "mislas-study": "study.run:main",
           "mislas-report": "study.report:main", "mislas-submit": "study.submit:main"}
DATASETS = sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed into)."""
    root = tmp_path_factory.mktemp("install")
    wheel = build_wheel(root)
    target = root / "site"
    quiet_pip("install", "--target", str(target), str(wheel), cwd=root)
    return wheel, target


def run_outside(target: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run with the installed copy first on the path, from a folder outside the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(target)
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_wheel_contents(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    assert {f"search_spaces/{d}.yaml" for d in DATASETS} <= names and "search_spaces/__init__.py" in names
    assert {n.split("/")[0] for n in names} == {"mislas", "study", "search_spaces", dist_info}  # no benchmarks/ tests/
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the names' case
    parser.read_string(entry_points)
    assert dict(parser["console_scripts"]) == SCRIPTS
    requires = [ln.split(":", 1)[1].strip() for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].split("<")[0] for r in core) == [
        "numpy", "pillow", "pyyaml", "torch", "torchvision"]
    assert not any("pydantic" in r for r in requires)
    assert any(r.startswith("ray[default,tune]") and ">=2.52" in r and "<2.61" in r and 'extra == "study"' in r
               for r in requires), requires
    assert any(r.startswith("matplotlib") and 'extra == "report"' in r for r in requires), requires
    assert any(r.startswith("mislas-study[report,study,tracking]") and 'extra == "test"' in r for r in requires), requires


def test_installed_package_runs_outside_the_repository(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed
    py = sys.executable
    check = (
        "import ast, importlib.util\n"
        "import mislas, study, search_spaces\n"
        "from study import submit\n"
        "from study.space import default_space_file\n"
        f"for name, target in {SCRIPTS!r}.items():  # each target is a top-level function (read, not imported)\n"
        "    module, func = target.split(':')\n"
        "    origin = importlib.util.find_spec(module).origin\n"
        "    tree = ast.parse(open(origin).read())\n"
        "    assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in tree.body), target\n"
        "    print('script', origin)\n"
        "for m in (mislas, study, search_spaces):\n"
        "    print('module', m.__file__)\n"
        "print('space', default_space_file('places_lt'))\n"
        "env = submit.runtime_env(submit.build_parser().parse_args(['--address', 'http://h:8265']))\n"
        "assert 'working_dir' not in env, env  # an install ships its packages, never site-packages\n"
        "for path in env['py_modules']:\n"
        "    print('py_module', path)\n"
    )
    commands = {
        "check": [py, "-c", check],
        "run --help": [py, "-m", "study.run", "--help"],
        "submit --help": [py, "-m", "study.submit", "--help"],
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        procs = dict(zip(commands, pool.map(lambda argv: run_outside(target, tmp_path, *argv), commands.values())))
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
    printed: dict[str, list[Path]] = {}
    for line in procs["check"].stdout.splitlines():
        key, path = line.split(" ", 1)
        printed.setdefault(key, []).append(Path(path))
    site = target.resolve()
    for path in [p for paths in printed.values() for p in paths]:
        assert path.resolve().is_relative_to(site), (path, site)
    (space_file,) = printed["space"]
    assert space_file.is_file() and space_file.name == "places_lt.yaml"
    assert sorted(p.name for p in printed["py_module"]) == ["mislas", "search_spaces", "study"]
    assert "--dataset" in procs["run --help"].stdout and "usage:" in procs["run --help"].stdout
    assert "--token-file" in procs["submit --help"].stdout
    assert {p.name for p in (target / "bin").iterdir()} >= set(SCRIPTS)  # pip wrote the console scripts


def test_the_study_runs_without_the_report_extra() -> None:
    """``pip install mislas-study[study]`` has no matplotlib or jinja2: nothing a study imports may need them."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('matplotlib', 'jinja2'):\n"
        "            raise ImportError(f'{name} is in the report extra only')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import study.run, study.driver, study.summary, study.stage1_phase, study.trainable, study.callbacks\n"
        "import study.reporting\n"
        "assert 'matplotlib' not in sys.modules and 'jinja2' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_runtime_env_ships_exactly_the_wheels_files(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """What ``study.submit`` / ``study.run --address`` ship from an install, packed by Ray's own
    packer with the runtime env's excludes, is the wheel's file list for the three packages:
    mislas/data/ included (a repository-anchored "/data/" dropped it), the bytecode pip compiled
    and a file left in site-packages beside the packages not."""
    wheel, target = installed
    stray = target / "mislas" / "notes.txt"
    stray.write_text("not part of the wheel\n")
    pack = (
        "import json, sys, zipfile\n"
        "from pathlib import Path\n"
        "from ray._private.runtime_env.packaging import _zip_files\n"
        "from study.runtime import code_runtime_env\n"
        "env = code_runtime_env()\n"
        "names = []\n"
        "for i, module in enumerate(env['py_modules']):\n"
        "    out = Path(sys.argv[1]) / f'{i}.zip'\n"
        "    _zip_files(module, env['excludes'], str(out), include_gitignore=True, include_parent_dir=True)\n"
        "    names += zipfile.ZipFile(out).namelist()\n"
        "print(json.dumps(names))\n"
    )
    try:
        proc = run_outside(target, tmp_path, sys.executable, "-c", pack, str(tmp_path))
    finally:
        stray.unlink()
    assert proc.returncode == 0, proc.stderr[-3000:]
    shipped = json.loads(proc.stdout.splitlines()[-1])
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n for n in zf.namelist() if n.split("/")[0] in ("mislas", "study", "search_spaces")}
    assert list((target / "mislas" / "__pycache__").glob("*.pyc"))  # there was bytecode to leave out
    assert "mislas/data/__init__.py" in shipped and "mislas/data/lt.py" in shipped
    assert len(shipped) == len(set(shipped)) and set(shipped) == in_wheel
