"""Every shell block of README.md and docs/study.md carries a marker, and those marked runnable
run as written, on tiny settings.

The convention (README.md, "Tests"): the last non-blank line before a shell block's opening fence
(```` ```bash ````, ``sh``, ``shell``, ``console`` or no language) is one of

- ``<!-- run: tiny -->``: this test runs the block with bash (``-e``), in document order, in one
  scratch folder per document whose ``.venv`` is this test's venv; each ``mislas.train`` /
  ``study.run`` command gets :data:`TINY`'s flags for its entry point appended
  (before a trailing ``# comment``: argparse keeps the last value, ``--set`` adds overrides),
  and nothing else changes;
- ``<!-- skip: REASON -->``: not run (it needs a GPU, data, the network, a server, ...), REASON said.

A block without a marker, or with another one, fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/study.md")
SHELL = {"", "bash", "sh", "shell", "console"}
MARKER = re.compile(r"^<!--\s*(run|skip):\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
# Appended to each command of a runnable block, per entry point: a tiny data set and budget.
TINY = {
    "mislas.train": ["--set", "data.n_max=100", "--set", "data.val_per_class=5", "--set", "data.test_per_class=20",
                     "--set", "stage1.epochs=1", "--set", "stage1.milestones=", "--set", "stage2.epochs=1", "--quiet"],
    "study.run": ["--trials", "1", "--set", "data.test_per_class=50"],
}

pytestmark = pytest.mark.docs


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: tuple[str, str] | None  # ("run", "tiny") / ("skip", reason)

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"


def shell_blocks(document: str) -> list[Block]:
    lines = (REPO / document).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in SHELL:
            before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            found = MARKER.match(before)
            blocks.append(Block(document, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                                (found.group(1), found.group(2)) if found else None))
        i = end + 1
    return blocks


def tiny(text: str) -> str:
    """The block with :data:`TINY`'s flags appended to each command of the entry points listed."""
    out = []
    for command in text.replace("\\\n", " ").splitlines():
        code, hash_, comment = command.partition(" #")
        for module, flags in TINY.items():
            if re.search(rf"-m {re.escape(module)}(\s|$)", code):
                code = f"{code.rstrip()} {shlex.join(flags)}"
        out.append(code + (f" {hash_.strip()}{comment}" if hash_ else ""))
    return "\n".join(out) + "\n"


BLOCKS = [b for d in DOCUMENTS for b in shell_blocks(d)]


def test_every_shell_block_is_marked() -> None:
    assert len(BLOCKS) >= 10 and {b.document for b in BLOCKS} == set(DOCUMENTS)
    bad = [b.where for b in BLOCKS if b.marker is None or b.marker[0] == "run" and b.marker[1] != "tiny"
           or b.marker[0] == "skip" and not b.marker[1]]
    assert not bad, f"shell blocks without <!-- run: tiny --> or <!-- skip: REASON --> before them: {bad}"


def test_the_readme_states_the_tiny_overrides() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())
    for module, flags in TINY.items():
        assert f"`{module}` command gets `{shlex.join(flags)}`" in readme or (
            f"`{module}` command `{shlex.join(flags)}`" in readme), module


def test_tiny_appends_flags_before_comments_and_joins_continuations() -> None:
    got = tiny(".venv/bin/python -m study.run --dataset d --trials 6  # six\n"
               "python -m study.run --dataset d \\\n  --seeds 0\necho -m study.runner\n")
    assert got.splitlines() == [
        ".venv/bin/python -m study.run --dataset d --trials 6 --trials 1 --set data.test_per_class=50 # six",
        "python -m study.run --dataset d    --seeds 0 --trials 1 --set data.test_per_class=50",
        "echo -m study.runner",
    ]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_runnable_blocks_run_as_written(document: str, tmp_path: Path) -> None:
    """The runnable blocks of one document, in order, in one scratch folder (a report block reads
    the study an earlier block wrote); then the count of run and skipped blocks, with reasons."""
    blocks = [b for b in BLOCKS if b.document == document]
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
    env.pop("RAY_ADDRESS", None)
    ran = []
    for block in blocks:
        if block.marker != ("run", "tiny"):
            continue
        script = tiny(block.text)
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (block.where, script, (proc.stdout + proc.stderr)[-4000:])
        ran.append(block.where)
    skipped = [f"{b.where} ({b.marker[1]})" for b in blocks if b.marker and b.marker[0] == "skip"]
    print(f"\n{document}: {len(ran)} run ({', '.join(ran)}), {len(skipped)} skipped:\n"
          + textwrap.indent("\n".join(skipped), "  "))
    assert len(ran) + len(skipped) == len(blocks)
    if document == "README.md":
        out = tmp_path / "runs" / "fmnist"
        assert {p.name for p in out.glob("metrics-*.json")} == {"metrics-mislas.json", "metrics-crt.json"}
        report = tmp_path / "results" / "fashion_mnist_lt-smoke" / "report"
        assert (report / "report.html").is_file()
