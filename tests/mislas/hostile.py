"""A hostile pickle for the safety tests (a helpers module shared by tests/mislas/test_safe_load.py
and tests/study/test_study_faults.py): unpickled, it runs ``touch <marker>``."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import torch

SYSTEM = f"{os.system.__module__}.system"  # posix.system here: the global a hostile pickle names


class Hostile:
    """Unpickled, this runs ``touch marker``: what a planted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(path: Path, marker: Path, kind: str = "stage1") -> Path:
    """A torch file shaped like ours (format_version, kind) whose model is the hostile object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": 1, "kind": kind, "model": Hostile(marker), "epoch": 1}, path)
    return path
