"""One two-stage run from the command line: ``python -m mislas.train --dataset D --out DIR``.

The edge of the library: it builds the frozen config once (preset, flags, ``--set``),
picks the device, trains or reuses Stage 1 under ``DIR/stage1``, runs the chosen Stage-2
method under ``DIR/stage2-<method>``, and writes ``DIR/metrics-<method>.json`` (one file per
method, so that runs of several methods on one ``--out`` and its Stage 1 sit side by side). Bad input (flags,
config values, an unavailable device, an ``--out`` that is a file, a checkpoint that is not
data) exits with status 2 and one line naming the file, field or value; an ``--out`` folder
this run made is removed again if the refusal left it empty. A diverged run
(:class:`NonFiniteError`) exits with status 1 and one line naming the stage, epoch and member
and the learning rate to lower.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from mislas.atomic import write_atomic
from mislas.config import (
    METHODS,
    PRESETS,
    TRAINED_METHODS,
    RunConfig,
    apply_overrides,
    effective_shift_bn,
    preset_config,
    with_method,
)
from mislas.data import DATASETS, LTData, load_dataset
from mislas.data.samplers import class_aware_epoch_steps
from mislas.device import resolve_device
from mislas.errors import EXIT_USAGE, NonFiniteError, UsageError
from mislas.records import StageResult
from mislas.reference import load_any_stage1
from mislas.spec import device_name
from mislas.stage1 import train_stage1
from mislas.stage2 import train_stage2


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but its errors are one line (exit 2) like every other usage error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m mislas.train`` command line."""
    parser = _OneLineParser(
        prog="python -m mislas.train", description="Train MiSLAS (or a baseline) in two stages and evaluate it."
    )
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--imb-factor", type=float, default=None, help="β = N_max/N_min for CIFAR/Fashion-MNIST-LT")
    parser.add_argument("--method", default="mislas", help=f"one of {', '.join(METHODS)} (default mislas)")
    parser.add_argument("--no-mixup", action="store_true", help="plain Stage 1 (no mixup)")
    parser.add_argument("--data-root", default=None, help="folder with the data set's files")
    parser.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, metrics-<method>.json)")
    parser.add_argument("--preset", default="paper", help="paper = Table 6 budget; smoke = a small CPU budget")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. stage2.eps_1=0.3 (repeatable)")
    parser.add_argument("--stage1-checkpoint", type=Path, default=None,
                        help="reuse this finished Stage-1 checkpoint (ours, or the reference's released "
                             "file, told apart by its keys) instead of training DIR/stage1")
    parser.add_argument("--pretrained", default=None,
                        help="ImageNet weights file for torchvision ResNets (or 'torchvision' to download)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    return parser


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """The run's config from the command line: the preset, then the flags, then ``--set``."""
    if args.dataset not in DATASETS:
        raise UsageError(f"--dataset: unknown data set {args.dataset!r}; allowed: {', '.join(DATASETS)}")
    if args.method not in METHODS:
        raise UsageError(f"--method: unknown method {args.method!r}; allowed: {', '.join(METHODS)}")
    if args.preset not in PRESETS:
        raise UsageError(f"--preset: unknown preset {args.preset!r}; allowed: {', '.join(PRESETS)}")
    cfg = with_method(preset_config(args.preset, args.dataset, args.imb_factor), args.method)
    cfg = replace(
        cfg,
        data=replace(cfg.data, data_root=args.data_root),
        stage1=replace(cfg.stage1, mixup=not args.no_mixup, pretrained=args.pretrained or cfg.stage1.pretrained),
        seed=cfg.seed if args.seed is None else args.seed,
        device=args.device or cfg.device,
    )
    return apply_overrides(cfg, args.overrides)


def check_out(out: Path) -> None:
    """``--out`` is a folder (made if missing), not an existing file."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is an existing file; give a folder for checkpoints and metrics-<method>.json")


def load_data(cfg: RunConfig) -> LTData:
    """Load the long-tailed data set the config names."""
    d = cfg.data
    return load_dataset(
        d.dataset, d.data_root, imb_factor=d.imb_factor, n_max=d.n_max, seed=d.seed, val_per_class=d.val_per_class,
        train_list=d.train_list, val_list=d.val_list, test_list=d.test_list, download=d.download,
        test_per_class=d.test_per_class,
    )


def _result_json(result: StageResult) -> dict[str, Any]:
    return {"val": result.val.summary(), "test": result.test.summary()}


def _temperature_json(result: StageResult) -> dict[str, Any] | None:
    """Post-hoc temperature scaling: T fitted on val, and the metrics of logits / T."""
    if result.temperature is None or result.val_ts is None or result.test_ts is None:
        return None
    return {"temperature": result.temperature, "val": result.val_ts.summary(), "test": result.test_ts.summary()}


def write_json_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` as JSON, atomically."""
    text = json.dumps(payload, indent=2, default=_jsonable) + "\n"
    write_atomic(path, text.encode())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [None if (isinstance(v, float) and np.isnan(v)) else v for v in value.tolist()]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def run(cfg: RunConfig, out: Path, *, stage1_checkpoint: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Both stages for ``cfg``; returns (and writes to ``out/metrics-<method>.json``) the metrics.

    ``shift_bn`` in metrics.json (top level, the ``stage2`` section and the config) is the
    effective value (:func:`mislas.config.effective_shift_bn`), never null.
    """
    check_out(out)
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_data(cfg)
    if progress:
        print(f"[data] {data.name}: {len(data.train.labels)} train / {len(data.val.labels)} val / "
              f"{len(data.test.labels)} test images, {data.num_classes} classes, counts "
              f"{max(data.class_counts)}..{min(data.class_counts)}; device {device_name(device)}",
              file=sys.stderr, flush=True)
    t_data = time.perf_counter()
    if stage1_checkpoint is not None:
        model = load_any_stage1(stage1_checkpoint, data, cfg, device)  # ours or the reference's
        stage1 = train_stage2(data, model, replace(cfg, stage2=replace(cfg.stage2, method="ce")), device=device,
                              progress=False)
    else:
        stage1 = train_stage1(data, cfg, device=device, checkpoint_dir=out / "stage1", progress=progress)
    t_stage1 = time.perf_counter()
    stage2_dir = out / f"stage2-{cfg.stage2.method}"
    stage2 = train_stage2(data, stage1.model, cfg, device=device, checkpoint_dir=stage2_dir, progress=progress)
    t_stage2 = time.perf_counter()
    s2 = cfg.stage2
    shift_bn = effective_shift_bn(cfg)
    trained = s2.method in TRAINED_METHODS
    config = cfg.to_dict()
    config["stage2"]["shift_bn"] = shift_bn
    metrics: dict[str, Any] = {
        **_result_json(stage2),
        "method": s2.method,
        "mixup": cfg.stage1.mixup,
        "las_target": s2.las_target if s2.method == "mislas" else None,
        "shift_bn": shift_bn,
        "stage2": {
            "method": s2.method, "shift_bn": shift_bn, "mixup": s2.mixup if trained else False,
            "epoch_length": s2.epoch_length if trained else None,
            "steps_per_epoch": class_aware_epoch_steps(s2.epoch_length, data.class_counts, s2.batch_size)
            if trained else 0,
        },
        "temperature_scaling": _temperature_json(stage2),
        "stage1": _result_json(stage1),
        "extras": {k: v for k, v in stage2.extras.items()},
        "per_class": {
            "train_count": list(data.class_counts),
            "test_acc": stage2.test.per_class_acc,
            "weight_norm": stage2.weight_norms,
        },
        "reliability": {"test": stage2.test.reliability},
        "epochs": [asdict(r) for r in stage2.epochs],
        "wall_s": {"data": t_data - t0, "stage1": t_stage1 - t_data, "stage2": t_stage2 - t_stage1},
        "device": device_name(device),
        "torch_version": torch.__version__,
        "data_fingerprint": data.fingerprint,
        "config": config,
    }
    write_json_atomic(metrics, metrics_path(out, cfg.stage2.method))
    return metrics


def metrics_path(out: Path, method: str) -> Path:
    """The metrics file of ``method`` under ``out``.

    Where a run of ``method`` on ``out`` writes its metrics: a file per method, so that a
    second ``--method`` on the same ``--out`` (same Stage 1) does not replace the first's.
    """
    return out / f"metrics-{method}.json"


def _format_row(name: str, summary: dict[str, float | None]) -> str:
    def f(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.2f}"
    return (f"{name:<14} {f(summary['acc'])} {f(summary['acc_many'])} {f(summary['acc_medium'])} "
            f"{f(summary['acc_few'])} {f(summary['ece'])} {f(summary['nll'])}")


def divergence_line(exc: NonFiniteError, cfg: RunConfig) -> str:
    """One line for a diverged run: where (stage, epoch, member) and what to try."""
    stage = cfg.stage1 if exc.stage == 1 else cfg.stage2
    member = exc.member if exc.member is not None else 0  # mislas.train trains one config: member 0
    found = re.search(r"\(([^()]*)\)\s*$", str(exc))
    what = found.group(1) if found else "non-finite values"
    return (f"stage {exc.stage}, epoch {exc.epoch}, member {member}: training diverged ({what}); try a lower "
            f"learning rate, e.g. --set stage{exc.stage}.lr={stage.lr / 10:g} (now {stage.lr:g})")


def first_missing(out: Path) -> Path | None:
    """The outermost folder of ``out`` that does not exist yet (what this run would make)."""
    if out.exists():
        return None
    made = out.absolute()
    while not made.parent.exists():
        made = made.parent
    return made


def remove_if_left_empty(made: Path | None) -> None:
    """Remove the folders a refused run made (``made`` and below) that it left empty; never a file."""
    if made is None or not made.is_dir():
        return
    for folder, _, _ in os.walk(made, topdown=False):
        try:
            os.rmdir(folder)
        except OSError:  # not empty: something was written there
            pass


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m mislas.train``; return its exit status."""
    args = build_parser().parse_args(argv)
    made = first_missing(args.out)
    cfg: RunConfig | None = None
    try:
        check_out(args.out)
        cfg = resolve_config(args)
        metrics = run(cfg, args.out, stage1_checkpoint=args.stage1_checkpoint, progress=not args.quiet)
    except UsageError as exc:
        remove_if_left_empty(made)
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteError as exc:
        assert cfg is not None  # only training diverges
        print(f"error: {divergence_line(exc, cfg)}", file=sys.stderr)
        return 1
    stage1_name = "CE+mixup" if cfg.stage1.mixup else "CE"
    mislas_name = "MiSLAS" if cfg.stage1.mixup else "MiSLAS (plain S1)"
    method_name = {"mislas": mislas_name, "ce": stage1_name, "crt": "cRT", "lws": "LWS", "tau_norm": "tau-norm"}
    label = method_name[cfg.stage2.method] + ("" if cfg.stage2.method in ("mislas", "ce") or not cfg.stage1.mixup
                                              else "+mixup")
    print(f"\ntest split      {'All':>6} {'Many':>6} {'Med':>6} {'Few':>6} {'ECE':>6} {'NLL':>6}")
    print(_format_row(stage1_name + " (S1)", metrics["stage1"]["test"]))
    print(_format_row(label, metrics["test"]))
    print(f"\nmetrics: {metrics_path(args.out, cfg.stage2.method)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
