"""Self-describing checkpoints, written atomically.

Each file holds the run config and the data fingerprint beside the tensors, so a Stage-1
checkpoint cannot silently be reused on other data or another Stage-1 recipe. Writes go
through the project's one atomic writer (:func:`mislas.atomic.write_atomic`, re-exported
here): a temporary file in the same folder renamed over the target, so a crash mid-write
leaves the previous checkpoint intact. Reads are weights-only: a file is data, never code.

The stages' files: ``stage1.partial.pt`` (an interrupted Stage 1's last epoch),
``stage1.pt`` (a finished Stage 1) and ``stage2.pt`` (a Stage-2 group's last finished epoch:
every member's head, optimizer, schedule and records, and the backbone's BN buffers). Their
payloads are written and checked here, the training that fills them lives in
:mod:`mislas.stage1` and :mod:`mislas.stage2`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mislas.atomic import write_atomic
from mislas.config import RunConfig, Stage1Config
from mislas.errors import UsageError
from mislas.records import EpochRecord
from mislas.safe_load import load_torch_file

FORMAT_VERSION = 1
STAGE1 = "stage1.pt"
STAGE1_PARTIAL = "stage1.partial.pt"
STAGE2 = "stage2.pt"

__all__ = ["FORMAT_VERSION", "STAGE1", "STAGE1_PARTIAL", "STAGE2", "check_compatible", "checkpoint_config", "load",
           "load_stage1", "load_stage1_partial", "load_stage2", "save_atomic", "save_stage1", "save_stage1_partial",
           "save_stage2", "stage2_identity", "write_atomic"]


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


def checkpoint_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as stored in checkpoints (tuples as lists, so comparisons after loading hold)."""
    raw = cfg.to_dict()
    return {k: ({kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} if isinstance(v, dict) else v)
            for k, v in raw.items()}


def stage2_identity(cfg: RunConfig) -> tuple[Any, Any]:
    """What a Stage-2 checkpoint must agree on to be resumed: the Stage-2 section and the seed."""
    raw = checkpoint_config(cfg)
    return raw["stage2"], raw["seed"]


# --- Stage 1 ---------------------------------------------------------------------------------

def save_stage1_partial(path: Path, *, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, records: Sequence[EpochRecord],
                        cfg: RunConfig, fingerprint: str) -> None:
    """An unfinished Stage 1 after ``epoch``: everything a rerun needs to continue with the next epoch."""
    save_atomic(
        {"kind": "stage1_partial", "epoch": epoch, "model": model.state_dict(),
         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "records": [asdict(r) for r in records], "config": cfg.to_dict(),
         "data_fingerprint": fingerprint},
        path,
    )


def save_stage1(path: Path, *, model: torch.nn.Module, records: Sequence[EpochRecord], cfg: RunConfig,
                fingerprint: str) -> None:
    """A finished Stage 1: the model with its config, data fingerprint and epoch records."""
    save_atomic(
        {"kind": "stage1", "model": model.state_dict(), "config": cfg.to_dict(),
         "data_fingerprint": fingerprint, "records": [asdict(r) for r in records]},
        path,
    )


def load_stage1(path: Path, *, fingerprint: str, stage1: Stage1Config) -> dict[str, Any]:
    """A finished Stage-1 payload, after checking it was made on this data with this recipe."""
    payload = load(path)
    check_compatible(payload, path, fingerprint=fingerprint, stage1=asdict(stage1))
    if payload.get("kind") != "stage1":
        raise UsageError(f"checkpoint {path} is not a finished Stage-1 checkpoint")
    return payload


def load_stage1_partial(partial: Path | None, *, fingerprint: str, stage1: Stage1Config) -> dict[str, Any] | None:
    """An interrupted Stage 1's state (with its ``path``), checked like a finished one; None if there is none."""
    if partial is None or not partial.exists():
        return None
    state = load(partial)
    check_compatible(state, partial, fingerprint=fingerprint, stage1=asdict(stage1))
    state["path"] = str(partial)
    return state


# --- Stage 2 ---------------------------------------------------------------------------------

def save_stage2(path: Path, *, epoch: int, members: list[dict[str, Any]], body_buffers: Mapping[str, torch.Tensor],
                cfgs: Sequence[RunConfig], fingerprint: str) -> None:
    """A Stage-2 group after ``epoch``: every member's state and the backbone's BN buffers (copied to the CPU)."""
    save_atomic(
        {"kind": "stage2", "epoch": epoch, "members": members,
         "body_buffers": {k: v.detach().cpu().clone() for k, v in body_buffers.items()},
         "config": checkpoint_config(cfgs[0]), "configs": [checkpoint_config(c) for c in cfgs],
         "data_fingerprint": fingerprint},
        path,
    )


def load_stage2(path: Path, *, fingerprint: str, cfgs: Sequence[RunConfig]) -> dict[str, Any]:
    """A Stage-2 payload of this engine, for this data, Stage 1 and group of configs; UsageError otherwise."""
    state = load(path)
    check_compatible(state, path, fingerprint=fingerprint, stage1=asdict(cfgs[0].stage1))
    if state.get("kind") != "stage2" or "members" not in state:
        raise UsageError(f"checkpoint {path} is not a checkpoint of this Stage-2 engine; delete it to restart Stage 2")
    saved = [(c["stage2"], c["seed"]) for c in state["configs"]]
    if saved != [stage2_identity(c) for c in cfgs]:
        raise UsageError(f"checkpoint {path} belongs to another Stage-2 config (or group of configs)")
    return state
