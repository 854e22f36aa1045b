"""``python -m study.run``: the Ray Tune + Optuna study of MiSLAS's Stage-2 knobs.

    python -m study.run --dataset places_lt --trials 64 --gpus-per-trial 0.5 --storage s3://bucket/studies
    python -m study.run --dataset fashion_mnist_lt --budget smoke --trials 6

Without ``--address`` Ray starts in this process (all local CPUs); with one it joins that
cluster (inside a Ray job, ``RAY_ADDRESS`` does the same). Bad input exits with status 2 and
one line naming the option, file or key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from mislas.config import METHODS, PRESETS, apply_overrides, preset_config
from mislas.data import DATASETS
from mislas.errors import EXIT_USAGE, UsageError
from study.space import SearchSpace, default_space_file, load_space, table6_setting
from study.storage import Store

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINES = tuple(m for m in METHODS if m != "mislas")
SEARCH_OBJECTIVES = ("acc", "ece")

# The study's own shrink of mislas's smoke preset, so that a smoke study of a few trials runs
# in minutes on a 2-core CPU: Fashion-MNIST-LT with n_max 200 (492 training images), 50 val
# images a class, Stage 1 of 4 epochs, Stage 2 of 3 epochs. Other data sets keep the preset.
SMOKE_OVERRIDES: dict[str, tuple[str, ...]] = {
    "fashion_mnist_lt": ("data.n_max=200", "data.val_per_class=50", "stage1.epochs=4", "stage1.warmup_epochs=1",
                         "stage1.milestones=(3)", "stage2.epochs=3"),
}


# Config fields each trial sets itself; --set may not override them.
STUDY_KEYS = {
    **{f"stage2.{k}": "the search space"
       for k in ("eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target")},
    "stage2.method": "--methods", "stage1.mixup": "mislas: on; baselines: --baseline-mixup", "seed": "--seeds",
    "data.dataset": "--dataset", "data.imb_factor": "--imb-factor", "data.data_root": "--data-root",
    "device": "--gpus-per-trial",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and exit 2 like every other usage error."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m study.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", action="append", required=True, metavar="D",
                   help=f"data set to study (repeatable): {', '.join(DATASETS)}")
    p.add_argument("--trials", default="16", help="MiSLAS search trials per data set (default 16)")
    p.add_argument("--space", action="append", default=[], metavar="FILE",
                   help="search-space YAML (repeatable; its 'dataset' key says which); default search_spaces/<D>.yaml")
    p.add_argument("--objective", default="acc,ece", help="acc, ece, or acc,ece (default: both, a Pareto study)")
    p.add_argument("--scheduler", default=None, help="asha (default) or fifo; fifo with --group-size > 1, "
                                                      "where asha is refused (it cannot stop one member of a group)")
    p.add_argument("--group-size", default="1", metavar="G",
                   help="MiSLAS settings per Tune trial, trained together on one backbone pass per Stage-2 batch, "
                        "each its own row and Optuna trial (default 1: one setting per trial); needs --scheduler "
                        "fifo, the default then")
    p.add_argument("--gpus-per-trial", default=None, help="GPUs per trial, fractions allowed (default 1 if the "
                                                           "cluster has GPUs, else 0 = CPU)")
    p.add_argument("--cpus-per-trial", default="1", help="CPUs per trial (default 1)")
    p.add_argument("--max-concurrent", default=None, help="most trials at once (default: as resources allow)")
    p.add_argument("--storage", default="results", help="folder, NFS path or s3:// URI for results and the "
                                                         "Stage-1 cache (default ./results)")
    p.add_argument("--name", default=None, help="study name (default <datasets>-<budget>); a rerun with the "
                                                 "same name resumes it")
    p.add_argument("--resume", action="store_true", help="continue the study NAME (it must exist)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray in this process)")
    p.add_argument("--budget", default="paper", help="paper (Table 6 epochs) or smoke (a small CPU budget)")
    p.add_argument("--seeds", default="0", help="training seeds, comma separated (default 0)")
    p.add_argument("--methods", default="mislas", help=f"comma separated from {', '.join(METHODS)}; "
                                                        "non-mislas methods run as fixed baselines per data set x seed")
    p.add_argument("--baseline-mixup", default="both", help="Stage 1 of the baselines: off (plain), on (+mixup) "
                                                             "or both (default)")
    p.add_argument("--data-root", default=None, help="folder with the data set's files")
    p.add_argument("--imb-factor", default=None, help="β for CIFAR/Fashion-MNIST-LT (default 100)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a mislas config field for every trial, e.g. stage2.epochs=5 (repeatable)")
    p.add_argument("--grace-period", default="1", help="ASHA: Stage-2 epochs before a trial may be stopped")
    p.add_argument("--reduction-factor", default="3", help="ASHA reduction factor (default 3)")
    p.add_argument("--max-failures", default="2", help="retries of a trial whose worker dies (default 2)")
    p.add_argument("--num-cpus", default=None, help="CPUs of the in-process Ray (default: all)")
    p.add_argument("--sampler-seed", default="0", help="seed of the TPE sampler (default 0)")
    p.add_argument("--progress", action="store_true", help="per-epoch lines from every trial")
    return p


@dataclass(frozen=True)
class StudySettings:
    """The validated command line."""

    datasets: tuple[str, ...]
    trials: int
    spaces: dict[str, SearchSpace]
    objectives: tuple[str, ...]
    scheduler: str
    group_size: int
    gpus_per_trial: float | None
    cpus_per_trial: float
    max_concurrent: int | None
    storage: str
    name: str
    resume: bool
    address: str | None
    budget: str
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    baseline_mixup: tuple[bool, ...]
    data_root: str | None
    imb_factor: float | None
    overrides: tuple[str, ...]
    grace_period: int
    reduction_factor: float
    max_failures: int
    num_cpus: int | None
    sampler_seed: int
    progress: bool

    @property
    def metric(self) -> list[str] | str:
        from study.search import OBJECTIVES

        names = [OBJECTIVES[o][0] for o in self.objectives]
        return names if len(names) > 1 else names[0]

    @property
    def mode(self) -> list[str] | str:
        from study.search import OBJECTIVES

        modes = [OBJECTIVES[o][1] for o in self.objectives]
        return modes if len(modes) > 1 else modes[0]

    def imb_for(self, dataset: str) -> float | None:
        return self.imb_factor if DATASETS[dataset].kind == "array" else None

    def overrides_for(self, dataset: str) -> tuple[str, ...]:
        smoke = SMOKE_OVERRIDES.get(dataset, ()) if self.budget == "smoke" else ()
        return (*smoke, *self.overrides)

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same study (compared on resume)."""
        return {
            "datasets": list(self.datasets), "trials": self.trials, "objectives": list(self.objectives),
            "scheduler": self.scheduler, "budget": self.budget, "seeds": list(self.seeds),
            "methods": list(self.methods), "baseline_mixup": list(self.baseline_mixup),
            "imb_factor": self.imb_factor, "overrides": list(self.overrides),
            "spaces": {d: s.describe() for d, s in self.spaces.items()},
            "grace_period": self.grace_period, "reduction_factor": self.reduction_factor,
            "sampler_seed": self.sampler_seed,
            # only when grouped, so a study from before --group-size resumes as it was
            **({"group_size": self.group_size} if self.group_size > 1 else {}),
        }


def _int(text: str, option: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"{option}: must be an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{option}: must be >= {minimum}, got {value}")
    return value


def _float(text: str, option: str, *, minimum: float, strict: bool = False) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{option}: must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{option}: must be a finite number, got {text!r}")
    if value < minimum or (strict and value == minimum):
        raise UsageError(f"{option}: must be {'>' if strict else '>='} {minimum:g}, got {text}")
    return value


def _list(text: str, option: str, allowed: Sequence[str]) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise UsageError(f"{option}: must list at least one of {', '.join(allowed)}, got {text!r}")
    for item in items:
        if item not in allowed:
            raise UsageError(f"{option}: unknown value {item!r}; allowed: {', '.join(allowed)}")
    if len(set(items)) != len(items):
        raise UsageError(f"{option}: values must be distinct, got {text!r}")
    return items


def validate(args: argparse.Namespace, *, check_paths: bool = True) -> StudySettings:
    """Every check of the command line, before anything starts; raises UsageError.

    ``check_paths=False`` skips checks of paths that only the cluster sees (``--data-root``),
    for ``study.submit``.
    """
    datasets = tuple(args.dataset)
    for d in datasets:
        if d not in DATASETS:
            raise UsageError(f"--dataset: unknown data set {d!r}; allowed: {', '.join(DATASETS)}")
    if len(set(datasets)) != len(datasets):
        raise UsageError(f"--dataset: each data set once, got {', '.join(datasets)}")
    budget = args.budget
    if budget not in PRESETS:
        raise UsageError(f"--budget: unknown budget {budget!r}; allowed: {', '.join(PRESETS)}")
    methods = _list(args.methods, "--methods", METHODS)
    trials = _int(args.trials, "--trials", minimum=1 if "mislas" in methods else 0)
    objectives = _list(args.objective, "--objective", SEARCH_OBJECTIVES)
    group_size = _int(args.group_size, "--group-size", minimum=1)
    scheduler = args.scheduler if args.scheduler is not None else ("asha" if group_size == 1 else "fifo")
    if scheduler not in ("asha", "fifo"):
        raise UsageError(f"--scheduler: unknown scheduler {scheduler!r}; allowed: asha, fifo")
    if group_size > 1 and scheduler == "asha":
        raise UsageError(f"--scheduler asha: cannot be used with --group-size {group_size} (ASHA stops whole "
                         f"trials, and a group's members share one trial); use --scheduler fifo or --group-size 1")
    seeds_text = [t.strip() for t in args.seeds.split(",") if t.strip()]
    if not seeds_text:
        raise UsageError(f"--seeds: must list at least one seed, got {args.seeds!r}")
    seeds = tuple(_int(t, "--seeds", minimum=0) for t in seeds_text)
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: seeds must be distinct, got {args.seeds!r}")
    mixup_choice = {"off": (False,), "on": (True,), "both": (False, True)}
    if args.baseline_mixup not in mixup_choice:
        raise UsageError(f"--baseline-mixup: unknown value {args.baseline_mixup!r}; allowed: off, on, both")
    gpus = None if args.gpus_per_trial is None else _float(args.gpus_per_trial, "--gpus-per-trial", minimum=0.0)
    cpus = _float(args.cpus_per_trial, "--cpus-per-trial", minimum=0.0, strict=True)
    max_conc = None if args.max_concurrent is None else _int(args.max_concurrent, "--max-concurrent", minimum=1)
    imb = None
    if args.imb_factor is not None:
        imb = _float(args.imb_factor, "--imb-factor", minimum=1.0)
        if not any(DATASETS[d].kind == "array" for d in datasets):
            arrays = ", ".join(n for n, spec in DATASETS.items() if spec.kind == "array")
            raise UsageError(f"--imb-factor: applies only to {arrays}; {', '.join(datasets)} take their imbalance "
                             f"from their split lists")
    if check_paths and args.data_root is not None and not Path(args.data_root).is_dir():
        raise UsageError(f"--data-root: not a folder: {args.data_root}")
    name = args.name or f"{'+'.join(datasets)}-{budget}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise UsageError(f"--name: letters, digits and . _ + - only (not starting with one of them), got {name!r}")
    if not args.storage:
        raise UsageError("--storage: must not be empty")

    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        if key in STUDY_KEYS:
            raise UsageError(f"--set {key}: the study sets this field itself ({STUDY_KEYS[key]}); "
                             f"it cannot be overridden")
    settings_kw: dict[str, Any] = {}
    spaces: dict[str, SearchSpace] = {}
    given: dict[str, str] = {}
    for path in args.space:
        space_file = Path(path)
        if not space_file.is_file():
            raise UsageError(f"--space: no such file: {path}")
        import yaml

        try:
            raw = yaml.safe_load(space_file.read_text())
        except yaml.YAMLError:
            raw = None
        target = raw.get("dataset") if isinstance(raw, dict) else None
        if isinstance(target, str) and target in given:
            raise UsageError(f"--space: two files for {target}: {given[target]} and {path}")
        if isinstance(target, str) and target not in datasets:
            raise UsageError(f"{path}: dataset: the file is for {target!r}, which is not among --dataset "
                             f"({', '.join(datasets)})")
        if isinstance(target, str):
            given[target] = path
        else:  # let the loader name the problem
            load_space(path)
    for d in datasets:
        imb_d = imb if DATASETS[d].kind == "array" else None
        cfg = preset_config(budget, d, imb_d)
        paper = preset_config("paper", d, imb_d)
        try:
            apply_overrides(cfg, [*(SMOKE_OVERRIDES.get(d, ()) if budget == "smoke" else ()), *args.overrides])
        except UsageError as exc:
            text = str(exc)
            raise UsageError(text if text.startswith("--set") else f"--set: {text}") from None
        if "mislas" in methods:
            spaces[d] = load_space(given.get(d, default_space_file(d)), dataset=d, table6=table6_setting(paper))
    settings_kw.update(
        datasets=datasets, trials=trials if "mislas" in methods else 0, spaces=spaces, objectives=objectives,
        scheduler=scheduler, group_size=group_size, gpus_per_trial=gpus, cpus_per_trial=cpus, max_concurrent=max_conc,
        storage=args.storage, name=name, resume=bool(args.resume), address=args.address, budget=budget,
        seeds=seeds, methods=methods, baseline_mixup=mixup_choice[args.baseline_mixup],
        data_root=(str(Path(args.data_root).resolve()) if check_paths else args.data_root) if args.data_root else None,
        imb_factor=imb, overrides=tuple(args.overrides),
        grace_period=_int(args.grace_period, "--grace-period", minimum=1),
        reduction_factor=_float(args.reduction_factor, "--reduction-factor", minimum=1.0, strict=True),
        max_failures=_int(args.max_failures, "--max-failures", minimum=-1),
        num_cpus=None if args.num_cpus is None else _int(args.num_cpus, "--num-cpus", minimum=1),
        sampler_seed=_int(args.sampler_seed, "--sampler-seed", minimum=0), progress=bool(args.progress),
    )
    return StudySettings(**settings_kw)


# --- the study ---------------------------------------------------------------------------

def git_commit() -> str | None:
    """The code's commit: from git here, or MISLAS_GIT_COMMIT (study.submit sets it, as a job's
    working_dir has no .git)."""
    if os.environ.get("MISLAS_GIT_COMMIT"):
        return os.environ["MISLAS_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def baseline_configs(s: StudySettings) -> list[dict[str, Any]]:
    configs = []
    for seed in s.seeds:
        for d in s.datasets:
            for method in (m for m in s.methods if m != "mislas"):
                for mixup in s.baseline_mixup:
                    configs.append({"dataset": d, "method": method, "mixup": mixup, "seed": seed,
                                    "is_paper_setting": False, "optuna_study": None, "optuna_trial_number": None,
                                    **{k: None for k in ("eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn",
                                                         "las_target")}})
    return configs


def epochs_planned(s: StudySettings) -> dict[str, dict[str, int]]:
    from study.trainable import TRAINED_METHODS

    out = {}
    for d in s.datasets:
        cfg = apply_overrides(preset_config(s.budget, d, s.imb_for(d)), s.overrides_for(d))
        out[d] = {m: (cfg.stage2.epochs if m in TRAINED_METHODS else 0) for m in METHODS}
    return out


def _optuna_storage(results: Store, local_cache: Path) -> tuple[Any, Path]:
    """A JournalStorage file beside the results (a local copy when results are remote)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if results.local:
        path = results.local_path("optuna.log")
    else:
        path = local_cache / "optuna.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        if results.exists("optuna.log") and not path.exists():
            results.download(path, "optuna.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path))), path


def make_searcher(s: StudySettings, storage: Any) -> Any:
    from study.search import MislasOptunaSearch, StudySearcher, make_sampler

    searchers, table6, names = {}, {}, {}
    for i, d in enumerate(s.datasets if "mislas" in s.methods else ()):
        t6 = table6_setting(preset_config("paper", d, s.imb_for(d)))
        space = s.spaces[d]
        point = {n: t6[n] for n in space.searched_names(t6)}
        names[d] = f"{s.name}:{d}"
        searchers[d] = MislasOptunaSearch(
            # grouped: StudySearcher enqueues the Table 6 point as member 0 of the first groups
            space=space, metric=s.metric, mode=s.mode,
            points_to_evaluate=[point] * len(s.seeds) if s.group_size == 1 else None,
            sampler=make_sampler(s.sampler_seed + i), study_name=names[d], storage=storage,
        )
        table6[d] = {k: v for k, v in t6.items() if k in point}
    return StudySearcher(searchers=searchers, n_trials={d: s.trials for d in searchers}, seeds=s.seeds,
                         table6=table6, baselines=baseline_configs(s), metric=s.metric, mode=s.mode,
                         study_names=names, group_size=s.group_size)


def make_scheduler(s: StudySettings) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    from study.search import GroupedASHA

    if s.scheduler == "fifo":
        return FIFOScheduler()
    metric = s.metric[0] if isinstance(s.metric, list) else s.metric
    mode = s.mode[0] if isinstance(s.mode, list) else s.mode
    planned = epochs_planned(s)
    return GroupedASHA(metric=metric, mode=mode, max_t={d: planned[d]["mislas"] for d in s.datasets},
                       grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def trial_name(trial: Any) -> str:
    """Short, stable trial names (Tune's default repeats the whole config in folder names)."""
    c = trial.config
    return f"{c.get('dataset')}-{c.get('method')}-s{c.get('seed')}-{trial.trial_id}"


def _init_ray(s: StudySettings) -> tuple[bool, float]:
    """Start Ray in-process or join a cluster; returns (started here, seconds)."""
    import ray

    t0 = time.perf_counter()
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # A bounded number of checkpoints per trial makes Tune snapshot its state at every checkpoint, which
    # is what a resume wants; its "may become a bottleneck" warning is noise at this scale.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    address = s.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False, 0.0
    if address:
        kwargs: dict[str, Any] = {"address": address}
        if s.address and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
            # A driver outside a Ray job ships this code to the cluster's workers (inside a
            # job, the job's runtime_env already did).
            from study.submit import EXCLUDES

            kwargs["runtime_env"] = {"working_dir": str(REPO_ROOT), "excludes": EXCLUDES,
                                     "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}
        ray.init(**kwargs)
        return False, time.perf_counter() - t0
    # In-process: workers inherit this environment, so they import study/ and mislas/ from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=s.num_cpus or os.cpu_count(), include_dashboard=False, configure_logging=True,
             logging_level="WARNING")
    return True, time.perf_counter() - t0


def _check_study_json(s: StudySettings, results: Store) -> dict[str, Any] | None:
    if not results.exists("study.json"):
        if s.resume:
            raise UsageError(f"--resume: no study named {s.name!r} under {s.storage} (no {results.uri('study.json')})")
        return None
    saved = json.loads(results.read_bytes("study.json"))
    mine = json.loads(json.dumps(s.identity()))
    diff = sorted(k for k in mine if saved.get("identity", {}).get(k) != mine[k])
    if diff:
        raise UsageError(f"--name {s.name}: a study of that name with other settings exists at {results.uri()} "
                         f"(differs in {', '.join(diff)}); rerun with its settings to resume it, or pick a new --name")
    return saved


def run_study(s: StudySettings) -> int:
    """Run (or resume) the study; returns the exit status."""
    import ray
    from ray import tune

    from study import results as results_mod
    from study.callbacks import RecordContext, ResultsCallback
    from study.trainable import TrialContext, provenance, run_trial

    t_start = time.perf_counter()
    storage = Store(s.storage)
    results = storage.child(s.name)
    saved = _check_study_json(s, results)
    results.makedirs()
    local_cache = Path(os.path.expanduser("~/.cache/mislas-study")) / s.name
    created = saved["created_at"] if saved else datetime.now(timezone.utc).isoformat()
    study_json = {"name": s.name, "identity": s.identity(), "created_at": created,
                  "spaces": {d: sp.source for d, sp in s.spaces.items()}, "storage": storage.uri(),
                  "results": results.uri()}
    results.write_bytes(json.dumps(study_json, indent=2).encode(), "study.json")

    started_ray, ray_init_s = _init_ray(s)
    try:
        gpus = s.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        commit = git_commit()
        ctx = TrialContext(
            study=s.name, results_location=results.uri(), stage1_location=storage.uri("stage1"), budget=s.budget,
            imb_factor=s.imb_factor, data_root=s.data_root,
            overrides={d: s.overrides_for(d) for d in s.datasets}, gpus_per_trial=gpus,
            cpus_per_trial=s.cpus_per_trial, git_commit=commit, progress=s.progress,
        )
        trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                        {"cpu": s.cpus_per_trial, "gpu": gpus})
        record_ctx = RecordContext(
            study=s.name, results_location=results.uri(), budget=s.budget,
            imb_factors={d: preset_config(s.budget, d, s.imb_for(d)).data.imb_factor for d in s.datasets},
            epochs_planned=epochs_planned(s), provenance=provenance(), git_commit=commit,
            optuna_local=None if results.local else str(local_cache / "optuna.log"),
        )
        tune_path = results.uri("tune")
        if results.exists("tune") and tune.Tuner.can_restore(tune_path):
            print(f"[study] resuming {s.name} from {tune_path}", file=sys.stderr, flush=True)
            _optuna_storage(results, local_cache)  # remote results: fetch the journal the searcher writes to
            # Errored trials stay failed (their rows are written); unfinished ones continue
            # from their last checkpoint; finished ones are kept as they are.
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            if results_mod.complete_parts(results):
                raise UsageError(f"--name {s.name}: {results.uri()} holds trial results but no resumable Tune state; "
                                 f"pick a new --name")
            _set_aside_stale_journal(results, local_cache)
            optuna_storage, _ = _optuna_storage(results, local_cache)
            searcher = make_searcher(s, optuna_storage)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(s),
                                            num_samples=searcher.total, max_concurrent_trials=s.max_concurrent,
                                            # a trial's worker is kept for the next one: no process start and
                                            # torch import per trial (about 5 s on a small CPU)
                                            reuse_actors=True,
                                            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                run_config=tune.RunConfig(
                    name="tune", storage_path=results.uri(), callbacks=[ResultsCallback(record_ctx)], verbose=1,
                    failure_config=tune.FailureConfig(max_failures=s.max_failures),
                    # two kept: a driver killed between a trial's newest checkpoint and Tune's next
                    # state snapshot leaves a snapshot that names the one before, which must still exist
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                ),
            )
        t_fit = time.perf_counter()
        grid = tuner.fit()
        fit_s = time.perf_counter() - t_fit
        _reconcile(grid, record_ctx)
        results_mod.rebuild_unions(results)
        if not results.local:
            _upload_optuna(results, local_cache)
        planned = len(s.datasets) * s.trials + len(baseline_configs(s))
        if len(results_mod.complete_parts(results)) >= planned:  # only a finished study has orphans
            _close_orphans(results, local_cache, s)
        summary = summarize(s, results, timings={"ray_init_s": ray_init_s, "fit_s": fit_s,
                                                 "total_s": time.perf_counter() - t_start})
        summary["trials"]["planned"] = planned
        results.write_bytes(json.dumps(summary, indent=2, default=str).encode(), "summary.json")
        print_summary(summary)
        if summary["trials"]["total"] < planned:  # e.g. Ctrl-C: Tune saved its state and returned
            print(f"[study] {summary['trials']['total']} of {planned} trials ended; rerun the same command "
                  f"(or add --resume) to continue", file=sys.stderr)
            return 1
        return 0 if summary["trials"]["finished"] else 1
    finally:
        if started_ray:
            ray.shutdown()


def _reconcile(grid: Any, record_ctx: Any) -> None:
    """Write every ended trial the callback did not (a safety net; normally there is none)."""
    from study import results as results_mod
    from study.callbacks import ResultsCallback, _error_text
    from study.groups import member_ids

    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None) or []
    store = Store(record_ctx.results_location)
    callback = ResultsCallback(record_ctx)
    for trial in trials:
        ids = member_ids(trial.trial_id, dict(trial.config or {}))
        if trial.status in ("TERMINATED", "ERROR") and not all(results_mod.part_complete(store, i) for i in ids):
            callback.record(trial, error=_error_text(trial) if trial.status == "ERROR" else None)


def _set_aside_stale_journal(results: Store, local_cache: Path) -> None:
    """A journal without Tune state is from a driver killed before its first snapshot: its
    enqueued Table 6 points and asked trials would leak into this run, so it is set aside."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    if results.local:
        path = results.local_path("optuna.log")
        if path.exists():
            os.replace(path, path.with_name(f"optuna.log.stale-{stamp}"))
    else:
        cached = local_cache / "optuna.log"
        if cached.exists():
            os.replace(cached, cached.with_name(f"optuna.log.stale-{stamp}"))
        if results.exists("optuna.log"):
            results.write_bytes(results.read_bytes("optuna.log"), f"optuna.log.stale-{stamp}")
            results.fs.delete_file(results.path("optuna.log"))


def _upload_optuna(results: Store, local_cache: Path) -> None:
    path = local_cache / "optuna.log"
    if path.exists():
        results.upload(path, "optuna.log")


def _close_orphans(results: Store, local_cache: Path, s: StudySettings) -> None:
    """Optuna trials left RUNNING by a killed driver (asked, never run) are marked FAIL."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    path = results.local_path("optuna.log") if results.local else local_cache / "optuna.log"
    if not path.exists():
        return
    storage = JournalStorage(JournalFileBackend(str(path)))
    for d in s.spaces:
        try:
            study = optuna.load_study(study_name=f"{s.name}:{d}", storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_user_attr(t._trial_id, "status", "orphaned")
            study.tell(t.number, state=TrialState.FAIL)


# --- summary -----------------------------------------------------------------------------

def pareto_mask(acc: Sequence[float], ece: Sequence[float]) -> list[bool]:
    """Non-dominated points for (accuracy up, ECE down)."""
    pts = list(zip(acc, ece))
    mask = []
    for i, (a, e) in enumerate(pts):
        dominated = any((a2 >= a and e2 <= e) and (a2 > a or e2 < e) for j, (a2, e2) in enumerate(pts) if j != i)
        mask.append(not dominated)
    return mask


SETTING_COLUMNS = ("seed", "eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target")


def summarize(s: StudySettings, results: Store, *, timings: dict[str, float]) -> dict[str, Any]:
    from study import results as results_mod

    df = results_mod.read_table(results, "trials.parquet").to_pandas()
    out: dict[str, Any] = {
        "study": s.name, "results": results.uri(), "trials_parquet": results.uri("trials.parquet"),
        "optuna_journal": results.uri("optuna.log"),
        "trials": {"total": int(len(df)), "finished": int((df["status"] == "complete").sum()) if len(df) else 0,
                   "stopped_early": int((df["status"] == "stopped_early").sum()) if len(df) else 0,
                   "failed": int((df["status"] == "failed").sum()) if len(df) else 0},
        "datasets": {}, "timings": dict(timings), "group_size": s.group_size, "scheduler": s.scheduler,
    }
    if len(df):
        trained = df[df["stage1_trained"].fillna(False).astype(bool)]
        out["timings"].update({
            "stage1_trainings": int(len(trained)),
            "stage1_train_s": float(trained["stage1_s"].fillna(0).sum()),
            "stage1_wait_trial_s": float(df.loc[~df.index.isin(trained.index), "stage1_s"].fillna(0).sum()),
            "stage2_trial_s": float(df["stage2_s"].fillna(0).sum()),
        })
    for d in s.datasets:
        sub = df[(df["dataset"] == d)] if len(df) else df
        entry: dict[str, Any] = {}
        done = sub[(sub["status"] == "complete") & (sub["method"] == "mislas")] if len(sub) else sub
        if len(done):
            best_acc = done.loc[done["val_acc"].idxmax()]
            entry["best_val_acc"] = _setting(best_acc)
            eced = done.dropna(subset=["val_ece"])
            if len(eced):
                entry["best_val_ece"] = _setting(eced.loc[eced["val_ece"].idxmin()])
                mask = pareto_mask(eced["val_acc"].tolist(), eced["val_ece"].tolist())
                entry["pareto_front_size"] = int(sum(mask))
                entry["pareto_trial_ids"] = eced.loc[mask, "trial_id"].tolist()
            paper = done[done["is_paper_setting"].fillna(False).astype(bool)]
            if len(paper):
                entry["table6_val_acc_mean"] = float(paper["val_acc"].mean())
                entry["table6_val_ece_mean"] = float(paper["val_ece"].mean())
        base = sub[(sub["method"] != "mislas") & (sub["status"] == "complete")] if len(sub) else sub
        if len(base):
            entry["baselines_val_acc"] = {
                f"{m}{'+mixup' if mix else ''}": float(g["val_acc"].mean())
                for (m, mix), g in base.groupby(["method", "mixup"])}
        out["datasets"][d] = entry
    return out


def _setting(row: Any) -> dict[str, Any]:
    out = {"trial_id": row["trial_id"], "val_acc": row["val_acc"], "val_ece": row["val_ece"]}
    for k in SETTING_COLUMNS:
        v = row.get(k)
        out[k] = None if v is None or (isinstance(v, float) and v != v) else (v.item() if hasattr(v, "item") else v)
    return out


def print_summary(summary: dict[str, Any]) -> None:
    t = summary["trials"]
    lines = [f"\n== study {summary['study']}: {t['total']} trials ({t['finished']} complete, "
             f"{t['stopped_early']} stopped early by ASHA, {t['failed']} failed) =="]
    for d, e in summary["datasets"].items():
        if "best_val_acc" in e:
            b = e["best_val_acc"]
            lines.append(f"{d}: best val acc {b['val_acc']:.2f} % ({_fmt_setting(b)}) [{b['trial_id']}]")
        if "best_val_ece" in e:
            b = e["best_val_ece"]
            lines.append(f"{d}: best val ECE {b['val_ece']:.2f} % ({_fmt_setting(b)}) [{b['trial_id']}]")
        if "pareto_front_size" in e:
            lines.append(f"{d}: Pareto front (val acc up, val ECE down): {e['pareto_front_size']} trials")
        if "table6_val_acc_mean" in e:
            lines.append(f"{d}: Table 6 setting, mean over seeds: val acc {e['table6_val_acc_mean']:.2f} %, "
                         f"val ECE {e['table6_val_ece_mean']:.2f} %")
        for name, acc in e.get("baselines_val_acc", {}).items():
            lines.append(f"{d}: baseline {name}: val acc {acc:.2f} %")
    if summary.get("group_size", 1) > 1:
        lines.append(f"Stage 2 grouped: up to {summary['group_size']} MiSLAS settings per Tune trial on one backbone "
                     f"pass per batch (each its own row and Optuna trial); scheduler {summary['scheduler']} "
                     f"(ASHA cannot stop one member of a group)")
    tm = summary["timings"]
    lines.append(
        f"time: {tm['total_s']:.1f} s in all; Ray start-up {tm['ray_init_s']:.1f} s; trials {tm['fit_s']:.1f} s "
        f"(Stage 1: {tm.get('stage1_trainings', 0)} training(s), {tm.get('stage1_train_s', 0.0):.1f} s; "
        f"Stage 2 + eval: {tm.get('stage2_trial_s', 0.0):.1f} trial-s)")
    lines.append(f"results: {summary['results']} (trials.parquet, epochs.parquet, classes.parquet, "
                 f"reliability.parquet, summary.json); Optuna journal: {summary['optuna_journal']}")
    lines.append("selection used the validation split only; test metrics are recorded, never used")
    print("\n".join(lines), flush=True)


def _fmt_setting(b: dict[str, Any]) -> str:
    parts = [f"eps_1={b['eps_1']:.3g}", f"eps_k={b['eps_k']:.3g}", f"form={b['form']}"]
    if b.get("p") is not None:
        parts.append(f"p={b['p']:.3g}")
    parts += [f"dw_ratio={b['dw_ratio']:.3g}", f"shift_bn={b['shift_bn']}", f"las_target={b['las_target']}",
              f"seed={b['seed']}"]
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = validate(args)
        return run_study(settings)
    except UsageError as exc:
        print(f"python -m study.run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
