"""Evaluate any checkpoint, ours or the reference's, with the metrics ``mislas.train`` reports.

Why: published numbers and our own runs should be read off the same metric code. The
output, ``DIR/metrics.json``, has the ``val`` and ``test`` blocks of ``mislas.train``'s
metrics.json (:meth:`EvalResult.summary`), plus what was loaded.

- Our Stage-1 file (``stage1.pt``): read by :func:`mislas.stages.load_stage1` with the
  config stored in it (the data must match its fingerprint).
- Our Stage-2 file (``stage2.pt`` of MiSLAS, LWS or cRT): it holds only the classifier and
  the body's BN buffers, so the Stage-1 file is needed too (``--stage1-checkpoint``, by
  default ``../stage1/stage1.pt`` as ``mislas.train`` lays runs out).
- A reference file (:mod:`mislas.reference`): the data set's paper config; a Stage-2 file
  gets its learned per-class scale (LWS) applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from mislas import checkpoint
from mislas.config import RunConfig, apply_overrides, from_dict, paper_config
from mislas.data import LTData
from mislas.device import resolve_device
from mislas.errors import UsageError
from mislas.evaluation import evaluate_split
from mislas.models import Network, ScaledClassifier, build_model
from mislas.reference import (
    describe_keys,
    is_mislas_payload,
    is_reference_payload,
    load_reference_into,
    read_checkpoint_file,
    reference_from_payload,
)
from mislas.reference_order import reference_class_order
from mislas.stage1 import load_stage1
from mislas.train import load_data, write_json_atomic


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A model ready to evaluate, with what it came from."""

    model: Network
    cfg: RunConfig
    data: LTData
    kind: str  # mislas-stage1, mislas-stage2, reference-stage1, reference-stage2
    info: dict[str, Any]


def _stage2_parts(payload: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(head state, body BN buffers, config) of one of our Stage-2 checkpoints.

    Two layouts are read: the single-run one (``model: {classifier, body_buffers}``) and the
    group engine's (``members[i].head``, top-level ``body_buffers``, ``configs[i]``); a group
    file must hold one member, since its members are different models.
    """
    if "members" in payload:
        members = payload["members"]
        configs = payload.get("configs") or [payload.get("config", {})]
        if len(members) != 1:
            raise UsageError(f"checkpoint {path} holds {len(members)} Stage-2 configs; evaluate reads one-config files")
        return members[0]["head"], payload.get("body_buffers", {}), configs[0]
    if isinstance(payload.get("model"), dict) and "classifier" in payload["model"]:
        model = payload["model"]
        return model["classifier"], model.get("body_buffers", {}), payload.get("config", {})
    raise UsageError(f"checkpoint {path}: a Stage-2 checkpoint without a head (keys: {describe_keys(payload)})")


def _apply_stage2_state(model: Network, head: dict[str, Any], body_buffers: dict[str, Any], method: str,
                        path: Path) -> None:
    """Put a Stage-2 checkpoint's head and the body's BN buffers (shift learning) on a Stage-1 model."""
    linear = model.classifier
    assert isinstance(linear, nn.Linear)
    if method in ("mislas", "lws"):
        model.classifier = ScaledClassifier(linear, train_weight=method == "mislas", train_scale=True)
    elif method != "crt":
        raise UsageError(f"checkpoint {path}: Stage-2 method {method!r} writes no stage2.pt to evaluate")
    try:
        model.classifier.load_state_dict(head)
    except (KeyError, RuntimeError) as exc:
        raise UsageError(f"checkpoint {path}: its classifier does not fit method {method} ({exc})") from None
    buffers = dict(model.body.named_buffers())
    for name, value in body_buffers.items():
        if name not in buffers or buffers[name].shape != value.shape:
            raise UsageError(f"checkpoint {path}: body buffer {name} does not fit the Stage-1 model")
        buffers[name].copy_(value)


def _config_of_mislas(raw: dict[str, Any], path: Path, *, dataset: str, arch: str | None,
                      imb_factor: float | None) -> RunConfig:
    cfg = from_dict(raw)
    if cfg.data.dataset != dataset:
        raise UsageError(f"checkpoint {path} was made on {cfg.data.dataset}, not on --dataset {dataset}")
    if arch is not None and arch != cfg.stage1.arch:
        raise UsageError(f"checkpoint {path} holds arch {cfg.stage1.arch}, not --arch {arch}")
    if imb_factor is not None and imb_factor != cfg.data.imb_factor:
        raise UsageError(f"checkpoint {path} was made at imb_factor {cfg.data.imb_factor}, not {imb_factor}")
    return cfg


def load_for_evaluation(
    path: Path,
    *,
    dataset: str,
    arch: str | None = None,
    data_root: str | None = None,
    imb_factor: float | None = None,
    overrides: Sequence[str] = (),
    stage1_checkpoint: Path | None = None,
    device: str | None = None,
) -> Loaded:
    """Read ``path`` (any supported kind), its data, and build the model on the chosen device."""
    path = Path(path)
    payload = read_checkpoint_file(path)
    if is_mislas_payload(payload):
        kind = payload.get("kind")
        parts = _stage2_parts(payload, path) if kind == "stage2" else None
        raw_cfg = parts[2] if parts is not None else payload.get("config", {})
        cfg = _config_of_mislas(raw_cfg, path, dataset=dataset, arch=arch, imb_factor=imb_factor)
        cfg = replace(cfg, data=replace(cfg.data, data_root=data_root or cfg.data.data_root),
                      device=device or cfg.device)
        cfg = apply_overrides(cfg, overrides)
        data = load_data(cfg)
        dev = resolve_device(cfg.device)
        if kind == "stage1":
            return Loaded(load_stage1(path, data, cfg, dev), cfg, data, "mislas-stage1", {})
        if parts is None:
            raise UsageError(f"checkpoint {path} is a {kind!r} checkpoint; evaluate reads finished stage1 or stage2")
        s1 = Path(stage1_checkpoint) if stage1_checkpoint else path.parent.parent / "stage1" / "stage1.pt"
        if not s1.is_file():
            raise UsageError(f"checkpoint {path} is a Stage-2 file and needs its Stage-1 model: {s1} does not exist; "
                             "pass --stage1-checkpoint")
        checkpoint.check_compatible(payload, path, fingerprint=data.fingerprint, stage1=dataclasses.asdict(cfg.stage1))
        model = load_stage1(s1, data, cfg, dev)
        _apply_stage2_state(model, parts[0], parts[1], cfg.stage2.method, path)
        info = {"stage1_checkpoint": str(s1), "method": cfg.stage2.method, "stage2_epoch": payload.get("epoch"),
                "stage2_epochs_configured": cfg.stage2.epochs}
        return Loaded(model, cfg, data, "mislas-stage2", info)
    if not is_reference_payload(payload):
        raise UsageError(f"checkpoint {path} is neither a mislas checkpoint nor a reference MiSLAS one "
                         f"(top-level keys: {describe_keys(payload)})")
    if stage1_checkpoint is not None:
        raise UsageError("--stage1-checkpoint applies to our Stage-2 files only; a reference file is self-contained")
    ref = reference_from_payload(path, payload)
    cfg = paper_config(dataset, imb_factor)
    cfg = replace(cfg, data=replace(cfg.data, data_root=data_root),
                  stage1=replace(cfg.stage1, arch=cast(Any, arch or cfg.stage1.arch)), device=device or cfg.device)
    cfg = apply_overrides(cfg, overrides)
    data = load_data(cfg)
    dev = resolve_device(cfg.device)
    model = build_model(cfg.stage1.arch, data.num_classes, data.in_channels, None, load_pretrained=False)
    if ref.stage == 2:
        assert isinstance(model.classifier, nn.Linear)
        model.classifier = ScaledClassifier(model.classifier, train_weight=True, train_scale=True)
    order = reference_class_order(data)
    load_reference_into(model, ref, cfg.stage1.arch, class_order=order)
    model = model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    info = {"reference_epoch": ref.epoch, "class_order": "by descending train count" if order else "labels as given"}
    return Loaded(model, cfg, data, f"reference-stage{ref.stage}", info)


def evaluate_checkpoint(
    path: Path,
    *,
    dataset: str,
    out: Path,
    arch: str | None = None,
    data_root: str | None = None,
    imb_factor: float | None = None,
    overrides: Sequence[str] = (),
    stage1_checkpoint: Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``path`` on the val and test splits and write ``out/metrics.json``; returns a summary."""
    loaded = load_for_evaluation(
        Path(path), dataset=dataset, arch=arch, data_root=data_root, imb_factor=imb_factor, overrides=overrides,
        stage1_checkpoint=stage1_checkpoint, device=device,
    )
    dev = resolve_device(loaded.cfg.device)
    val = evaluate_split(loaded.model, loaded.data, "val", loaded.cfg, dev)
    test = evaluate_split(loaded.model, loaded.data, "test", loaded.cfg, dev)
    metrics: dict[str, Any] = {
        "val": val.summary(),
        "test": test.summary(),
        "checkpoint": str(path),
        "checkpoint_kind": loaded.kind,
        "arch": loaded.cfg.stage1.arch,
        **loaded.info,
        "per_class": {"train_count": list(loaded.data.class_counts), "test_acc": test.per_class_acc},
        "reliability": {"test": test.reliability},
        "data_fingerprint": loaded.data.fingerprint,
        "torch_version": torch.__version__,
        "config": loaded.cfg.to_dict(),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(metrics, out / "metrics.json")
    return {"metrics": str(out / "metrics.json"), "checkpoint_kind": loaded.kind,
            "val": metrics["val"], "test": metrics["test"]}
