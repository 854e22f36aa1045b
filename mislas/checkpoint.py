"""Self-describing checkpoints, written atomically.

Each file holds the run config and the data fingerprint beside the tensors, so a Stage-1
checkpoint cannot silently be reused on other data or another Stage-1 recipe. Writes go
through the project's one atomic writer (:func:`mislas.atomic.write_atomic`, re-exported
here): a temporary file in the same folder renamed over the target, so a crash mid-write
leaves the previous checkpoint intact. Reads are weights-only: a file is data, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mislas.atomic import write_atomic
from mislas.errors import UsageError
from mislas.safe_load import load_torch_file

FORMAT_VERSION = 1

__all__ = ["FORMAT_VERSION", "check_compatible", "load", "save_atomic", "write_atomic"]


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` of ``payload`` (with the format version), atomically."""
    write_atomic(path, lambda fh: torch.save({"format_version": FORMAT_VERSION, **payload}, fh))


def load(path: Path) -> dict[str, Any]:
    """One of our checkpoints, read weights-only (:func:`mislas.safe_load.load_torch_file`)."""
    path = Path(path)
    payload = load_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"checkpoint {path} is not a mislas checkpoint of format {FORMAT_VERSION}")
    return payload


def check_compatible(payload: dict[str, Any], path: Path, *, fingerprint: str, stage1: dict[str, Any] | None) -> None:
    """Refuse a checkpoint made on other data or (for Stage 1) with another Stage-1 recipe."""
    if payload.get("data_fingerprint") != fingerprint:
        raise UsageError(
            f"checkpoint {path} was made on other data (fingerprint {str(payload.get('data_fingerprint'))[:12]}, "
            f"this data {fingerprint[:12]}); use the same dataset, imb_factor, n_max and data seed"
        )
    if stage1 is not None:
        saved = payload.get("config", {}).get("stage1", {})
        diff = sorted(k for k in stage1 if k != "pretrained" and _norm(saved.get(k)) != _norm(stage1[k]))
        if diff:
            raise UsageError(
                f"checkpoint {path} was trained with another Stage-1 config (differs in {', '.join(diff)})"
            )


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
