"""Command line of ``python -m study.run``: argument parsing and cross-option validation.

The command line of ``python -m study.run``: argparse does the parsing, :func:`validate` the
cross-option rules, and both end in exit 2 with one line naming the option, file or key.

Used by study.run (the driver) and study.submit (which checks a study's arguments before
they reach a cluster).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import yaml

from mislas.config import METHODS, PRESETS
from mislas.data import DATASETS
from mislas.errors import EXIT_USAGE, UsageError
from study.schema import OBJECTIVES
from study.settings import STUDY_KEYS, StudySettings, base_config, table6
from study.space import default_space_file, load_space, read_space_text

MIXUP_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}
# The backbone's BN in Stage 2 for cRT / LWS: "train" as Kang et al.'s code (BN statistics
# re-estimate on class-balanced batches), "eval" (frozen statistics), or both.
BN_CHOICES: dict[str, tuple[bool | None, ...]] = {"train": (True,), "eval": (False,), "both": (True, False)}
ABLATIONS = ("none", "components")


class UsageParser(argparse.ArgumentParser):
    """argparse, but its errors are one line and exit 2 like every other usage error."""

    def error(self, message: str) -> NoReturn:
        """Print the error on one line and exit with the usage status (2)."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def integer(minimum: int) -> Callable[[str], int]:
    """Return an argparse type that parses an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(minimum: float, *, strict: bool = False) -> Callable[[str], float]:
    """Return an argparse type that parses a finite number >= ``minimum`` (> with ``strict``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def choices_list(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list of distinct values from ``allowed``."""
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        if not items:
            raise argparse.ArgumentTypeError(f"must list at least one of {', '.join(allowed)}, got {text!r}")
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"unknown value {item!r}; allowed: {', '.join(allowed)}")
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"values must be distinct, got {text!r}")
        return items

    parse.__name__ = "list"
    return parse


def seed_list(text: str) -> tuple[int, ...]:
    """Parse a comma-separated list of distinct non-negative seeds."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"must list at least one seed, got {text!r}")
    seeds = tuple(integer(0)(t) for t in parts)
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {text!r}")
    return seeds


def trackers(text: str) -> tuple[str, ...]:
    """Parse a ``--log`` tracker list (study.tracking.parse_trackers) as an argparse type."""
    from study.tracking import parse_trackers

    try:
        return parse_trackers(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--log: ")) from None


def study_name(text: str) -> str:
    """Check a study name: letters, digits and ``. _ + -``, starting with a letter or digit."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", text):
        raise argparse.ArgumentTypeError(f"letters, digits and . _ + - only (not starting with one of them), "
                                         f"got {text!r}")
    return text


def _search_arguments(p: argparse.ArgumentParser) -> None:
    """What is searched: data sets, trials, spaces, objectives and grouping."""
    p.add_argument("--dataset", action="append", required=True, choices=list(DATASETS), metavar="D",
                   help=f"data set to study (repeatable): {', '.join(DATASETS)}")
    p.add_argument("--trials", type=integer(0), default=16, help="MiSLAS settings searched per data set (default 16)")
    p.add_argument("--space", action="append", default=[], metavar="FILE",
                   help="search-space YAML (repeatable; its 'dataset' key says which); default search_spaces/<D>.yaml")
    p.add_argument("--objective", type=choices_list(tuple(OBJECTIVES)), default=("acc", "ece"),
                   help="acc, ece, or acc,ece (default: both, a Pareto study)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default=None,
                   help="asha (default) or fifo; fifo with --group-size > 1, where asha is refused (it cannot "
                        "stop one member of a group)")
    p.add_argument("--group-size", type=integer(1), default=1, metavar="G",
                   help="MiSLAS settings per Tune trial, trained together on one backbone pass per Stage-2 batch, "
                        "each its own row and Optuna trial (default 1); needs --scheduler fifo, the default then")


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    """Where trials run: resources per trial, storage, the study's name, the cluster."""
    p.add_argument("--gpus-per-trial", type=number(0.0), default=None,
                   help="GPUs per trial, fractions allowed (default 1 if the cluster has GPUs, else 0 = CPU)")
    p.add_argument("--cpus-per-trial", type=number(0.0, strict=True), default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--max-concurrent", type=integer(1), default=None,
                   help="most trials at once (default: as resources allow)")
    p.add_argument("--storage", default="results",
                   help="folder, NFS path or s3:// URI for results and the Stage-1 cache (default ./results)")
    p.add_argument("--name", type=study_name, default=None,
                   help="study name (default <datasets>-<budget>); a rerun with the same name resumes it")
    p.add_argument("--resume", action="store_true", help="continue the study NAME (it must exist)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray in this process)")
    p.add_argument("--wait-for-resources", type=number(0.0), default=0.0, metavar="SECONDS",
                   help="a joined cluster without the CPUs/GPUs a trial asks for: ask its autoscaler for them and "
                        "wait up to SECONDS (default 0: refused at once, as the in-process Ray always is)")


def _trial_arguments(p: argparse.ArgumentParser) -> None:
    """Which trials beside the search: the budget, seeds, baselines, ablation, confirmation."""
    p.add_argument("--budget", choices=PRESETS, default="paper",
                   help="paper (Table 6), reference (the reference code's config files: differs from Table 6 only in "
                        "iNaturalist's Stage 2, docs/method.md) or smoke (a small CPU budget)")
    p.add_argument("--seeds", type=seed_list, default=(0,), help="training seeds, comma separated (default 0)")
    p.add_argument("--methods", type=choices_list(METHODS), default=("mislas",),
                   help=f"comma separated from {', '.join(METHODS)}; non-mislas methods run as fixed baselines "
                        f"per data set x seed (default mislas)")
    p.add_argument("--baseline-mixup", choices=tuple(MIXUP_CHOICES), default="both",
                   help="Stage 1 of the baselines: off (plain), on (+mixup) or both (default)")
    p.add_argument("--baseline-bn", choices=tuple(BN_CHOICES), default="train",
                   help="the frozen backbone's BN in cRT/LWS: train (default, as Kang et al.'s code: statistics "
                        "re-estimate on class-balanced batches), eval, or both")
    p.add_argument("--ablation", choices=ABLATIONS, default="none",
                   help="components: also run every on/off combination of Stage-1 mixup, shift BN and LAS at the "
                        "Table 6 values, plus uniform label smoothing, per data set and seed (fixed trials)")
    p.add_argument("--confirm-best", action="store_true",
                   help="after the search of a data set, rerun the setting best on validation (highest mean val "
                        "acc, then lowest val ECE) once on every --seeds seed (fixed trials, variant "
                        "'best_on_val'): the report's 'MiSLAS (best tuned)' row then averages those seeds")


def _stage1_and_data_arguments(p: argparse.ArgumentParser) -> None:
    """Stage 1 (given or trained, and how) and the data."""
    p.add_argument("--stage1-checkpoint", action="append", default=[], metavar="[DATASET=]PATH",
                   help="use this finished Stage 1 (ours, or the MiSLAS reference's released file) for every trial "
                        "of the data set instead of training one (repeatable, one per data set; DATASET= may be "
                        "left out with one --dataset); it is a mixup Stage 1, so plain-Stage-1 trials are refused")
    p.add_argument("--stage1-workers", type=integer(1), default=1, metavar="N",
                   help="data-parallel workers for each Stage 1 (default 1: a Ray task; N > 1: Ray Train's "
                        "TorchTrainer with DDP, the recipe's global batch split over the workers, lr kept)")
    p.add_argument("--stage1-gpus-per-worker", type=number(0.0), default=None, metavar="G",
                   help="GPUs per Stage-1 worker (default 1 if the cluster has GPUs, else 0 = CPU); each worker "
                        "gets --cpus-per-trial CPUs")
    p.add_argument("--data-root", default=None, help="folder with the data set's files")
    p.add_argument("--imb-factor", type=number(1.0), default=None, help="β for CIFAR/Fashion-MNIST-LT (default 100)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a mislas config field for every trial, e.g. stage2.epochs=5 (repeatable)")


def _scheduling_arguments(p: argparse.ArgumentParser) -> None:
    """The scheduler, retries, the in-process Ray, the sampler, progress and trackers."""
    p.add_argument("--grace-period", type=integer(1), default=1,
                   help="ASHA: Stage-2 epochs before a trial may be stopped (default 1)")
    p.add_argument("--reduction-factor", type=number(1.0, strict=True), default=3.0,
                   help="ASHA reduction factor (default 3)")
    p.add_argument("--max-failures", type=integer(-1), default=2,
                   help="retries of a trial whose worker dies (default 2; -1 = forever)")
    p.add_argument("--num-cpus", type=integer(1), default=None, help="CPUs of the in-process Ray (default: all)")
    p.add_argument("--sampler-seed", type=integer(0), default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--progress", action="store_true", help="per-epoch lines from every trial")
    p.add_argument("--log", type=trackers, default=(), metavar="T[,T...]",
                   help="also log every trial to tensorboard, mlflow and/or wandb (comma separated; Ray Tune's "
                        "logger callbacks; pip install \".[tracking]\" from the repository); MLflow: $MLFLOW_TRACKING_URI "
                        "or <storage>/<name>/mlflow.db; W&B: $WANDB_PROJECT / $WANDB_MODE=offline")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python -m study.run``."""
    p = UsageParser(prog="python -m study.run",
                    description="The Ray Tune + Optuna study of MiSLAS's Stage-2 knobs (and its baselines).")
    _search_arguments(p)
    _cluster_arguments(p)
    _trial_arguments(p)
    _stage1_and_data_arguments(p)
    _scheduling_arguments(p)
    return p


def _space_files(paths: Sequence[str], datasets: Sequence[str]) -> dict[str, str]:
    """``--space`` files by the data set they name (read once more, whole, by load_space)."""
    given: dict[str, str] = {}
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"--space: no such file: {path}")
        try:
            raw = yaml.safe_load(read_space_text(path))
        except yaml.YAMLError:
            raw = None
        target = raw.get("dataset") if isinstance(raw, dict) else None
        if not isinstance(target, str):
            load_space(path)  # let the loader name the problem
            raise UsageError(f"{path}: dataset: a data set name (string) is required")
        if target in given:
            raise UsageError(f"--space: two files for {target}: {given[target]} and {path}")
        if target not in datasets:
            raise UsageError(f"{path}: dataset: the file is for {target!r}, which is not among --dataset "
                             f"({', '.join(datasets)})")
        given[target] = path
    return given


def _stage1_checkpoints(items: Sequence[str], datasets: Sequence[str], *, check_paths: bool) -> dict[str, str]:
    """``[DATASET=]PATH`` items by data set (absolute paths when they are checked here)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in DATASETS:
            if len(datasets) != 1:
                raise UsageError(f"--stage1-checkpoint: name the data set (DATASET=PATH) when several are studied, "
                                 f"got {item!r}")
            name, path = datasets[0], item
        if name not in datasets:
            raise UsageError(f"--stage1-checkpoint: {name} is not among --dataset ({', '.join(datasets)})")
        if name in out:
            raise UsageError(f"--stage1-checkpoint: two files for {name}")
        if check_paths:
            if not Path(path).is_file():
                raise UsageError(f"--stage1-checkpoint: no such file: {path}")
            path = str(Path(path).resolve())
        out[name] = path
    return out


def _sha256s(paths: dict[str, str]) -> dict[str, str]:
    """The sha256 of each given Stage-1 file (part of the study identity)."""
    from study.stage1_cache import file_sha256

    out = {}
    for d, path in paths.items():
        try:
            out[d] = file_sha256(Path(path))
        except OSError as exc:
            raise UsageError(f"--stage1-checkpoint: cannot read {path} ({type(exc).__name__}: {exc})") from None
    return out


def _check_options(args: argparse.Namespace, datasets: tuple[str, ...], methods: tuple[str, ...], *,
                   check_paths: bool) -> tuple[str, str | None]:
    """The rules between plain options; returns the scheduler and the (resolved) data root."""
    if len(set(datasets)) != len(datasets):
        raise UsageError(f"--dataset: each data set once, got {', '.join(datasets)}")
    if "mislas" in methods and args.trials < 1 and args.ablation == "none":
        raise UsageError(f"--trials: must be >= 1 when mislas is among --methods, got {args.trials}")
    if args.confirm_best and ("mislas" not in methods or args.trials < 1):
        raise UsageError("--confirm-best: needs mislas among --methods and --trials >= 1 (it reruns the best "
                         "searched setting)")
    scheduler = args.scheduler or ("asha" if args.group_size == 1 else "fifo")
    if args.group_size > 1 and scheduler == "asha":
        raise UsageError(f"--scheduler asha: cannot be used with --group-size {args.group_size} (ASHA stops whole "
                         f"trials, and a group's members share one trial); use --scheduler fifo or --group-size 1")
    if args.imb_factor is not None and not any(DATASETS[d].kind == "array" for d in datasets):
        arrays = ", ".join(n for n, spec in DATASETS.items() if spec.kind == "array")
        raise UsageError(f"--imb-factor: applies only to {arrays}; {', '.join(datasets)} take their imbalance "
                         f"from their split lists")
    data_root = _data_root(args.data_root, check_paths=check_paths)
    if not args.storage:
        raise UsageError("--storage: must not be empty")
    if args.num_cpus is not None and args.cpus_per_trial > args.num_cpus:
        raise UsageError(f"--cpus-per-trial {args.cpus_per_trial:g}: more than --num-cpus {args.num_cpus}, so no "
                         f"trial could start")
    for item in args.overrides:
        _check_override(item)
    return scheduler, data_root


def _data_root(data_root: str | None, *, check_paths: bool) -> str | None:
    if data_root is not None and check_paths:
        if not Path(data_root).is_dir():
            raise UsageError(f"--data-root: not a folder: {data_root}")
        data_root = str(Path(data_root).resolve())
    return data_root


def _check_override(item: str) -> None:
    key = item.split("=", 1)[0].strip()
    if key in STUDY_KEYS:
        raise UsageError(f"--set {key}: the study sets this field itself ({STUDY_KEYS[key]}); it cannot be overridden")


def validate(args: argparse.Namespace, *, check_paths: bool = True) -> StudySettings:
    """The rules between options, the configs and the search spaces; raises UsageError.

    ``check_paths=False`` skips checks of paths that only the cluster sees (``--data-root``),
    for ``study.submit``.
    """
    datasets = tuple(args.dataset)
    methods = tuple(args.methods)
    scheduler, data_root = _check_options(args, datasets, methods, check_paths=check_paths)
    stage1 = _stage1_checkpoints(args.stage1_checkpoint, datasets, check_paths=check_paths)
    stage1_sha256 = _sha256s(stage1) if check_paths else {}
    if stage1 and (False in MIXUP_CHOICES[args.baseline_mixup] or args.ablation != "none"):
        raise UsageError("--stage1-checkpoint: the given Stage 1 is the mixup one; plain-Stage-1 trials need their "
                         "own: use --baseline-mixup on and --ablation none with it")
    from study.storage import StorageError, Store
    from study.tracking import check_installed, mlflow_tracking_uri

    if check_paths:  # (study.submit: the packages must be on the cluster, not necessarily here)
        check_installed(args.log)
    if "mlflow" in args.log:
        try:
            local = Store(args.storage).local
        except StorageError as exc:
            raise UsageError(f"--storage: {exc}") from None
        mlflow_tracking_uri(args.storage if local else None)  # remote storage needs $MLFLOW_TRACKING_URI
    configs, spaces = {}, {}
    files = _space_files(args.space, datasets)
    stage1_workers: int = args.stage1_workers
    for d in datasets:
        try:
            configs[d] = base_config(d, budget=args.budget, imb_factor=args.imb_factor,
                                     overrides=tuple(args.overrides), data_root=data_root)
        except UsageError as exc:
            text = str(exc)
            raise UsageError(text if text.startswith("--set") else f"--set: {text}") from None
        if configs[d].stage1.batch_size % stage1_workers:
            raise UsageError(f"--stage1-workers {stage1_workers}: {d}'s stage1.batch_size="
                             f"{configs[d].stage1.batch_size} is not a multiple of it (the global batch is split "
                             f"evenly over the workers)")
        if "mislas" in methods and args.trials > 0:
            spaces[d] = load_space(files.get(d, default_space_file(d)), dataset=d,
                                   table6=table6(d, args.imb_factor))
    return StudySettings(
        datasets=datasets, trials=args.trials if "mislas" in methods else 0, spaces=spaces, configs=configs,
        objectives=tuple(args.objective), scheduler=scheduler, group_size=args.group_size,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent,
        storage=args.storage, name=args.name or f"{'+'.join(datasets)}-{args.budget}", resume=bool(args.resume),
        address=args.address, budget=args.budget, seeds=tuple(args.seeds), methods=methods,
        baseline_mixup=MIXUP_CHOICES[args.baseline_mixup], baseline_bn=BN_CHOICES[args.baseline_bn],
        ablation=args.ablation, stage1_checkpoints=stage1, stage1_workers=stage1_workers,
        stage1_gpus_per_worker=args.stage1_gpus_per_worker, data_root=data_root, imb_factor=args.imb_factor,
        overrides=tuple(args.overrides), grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        max_failures=args.max_failures, num_cpus=args.num_cpus, sampler_seed=args.sampler_seed,
        progress=bool(args.progress), trackers=tuple(args.log), confirm_best=bool(args.confirm_best),
        stage1_sha256=stage1_sha256, wait_for_resources=args.wait_for_resources,
    )


def parse(argv: Sequence[str] | None = None, *, check_paths: bool = True) -> StudySettings:
    """Parse and validate; argparse errors exit 2, rule violations raise UsageError."""
    return validate(build_parser().parse_args(argv), check_paths=check_paths)


