"""A study's validated settings, and the configs built from them once, in the driver.

:class:`StudySettings` is what the command line means after every check (study.cli builds
it). The :class:`mislas.config.RunConfig` of each data set (budget preset + the study's smoke
shrink + ``--set`` + data root) is built here once, refused here if bad (before Ray starts),
and shipped to the trials whole; trials only add their method, seed and setting
(:meth:`study.records.TrialSpec.run_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any

from mislas.config import TRAINED_METHODS, RunConfig, apply_overrides, preset_config
from mislas.data import DATASETS
from study.records import Stage2Setting, TrialMember, TrialSpec
from study.schema import OBJECTIVES
from study.space import SearchSpace

# The study's own shrink of mislas's smoke preset, so that a smoke study of a few trials runs
# in minutes on a 2-core CPU: Fashion-MNIST-LT with n_max 200 (492 training images), 50 val
# images a class, Stage 1 of 4 epochs at batch 32, Stage 2 of 3 epochs. Other data sets keep the
# preset. Batch 32, not 128: 4 epochs at 128 are 16 steps, too few for BatchNorm's running
# statistics to catch up with the reference ResNet-32 init's activations, and the eval-mode
# network explodes (measured 2026-12-04: Stage-1 val NLL 6831, Stage-2 loss 2e25 and NaN); at 32
# (64 steps) it trains (Stage-2 val acc 23 %).
SMOKE_OVERRIDES: dict[str, tuple[str, ...]] = {
    "fashion_mnist_lt": ("data.n_max=200", "data.val_per_class=50", "stage1.epochs=4", "stage1.warmup_epochs=1",
                         "stage1.milestones=(3)", "stage1.batch_size=32", "stage2.epochs=3"),
}

# Config fields each trial sets itself; --set may not override them.
STUDY_KEYS = {
    **{f"stage2.{k}": "the search space" for k in Stage2Setting.names()},
    "stage2.method": "--methods", "stage1.mixup": "mislas: on; baselines: --baseline-mixup", "seed": "--seeds",
    "data.dataset": "--dataset", "data.imb_factor": "--imb-factor", "data.data_root": "--data-root",
    "device": "--gpus-per-trial",
}


def imb_for(dataset: str, imb_factor: float | None) -> float | None:
    """β applies to the array data sets (CIFAR, Fashion-MNIST); list data sets have their own."""
    return imb_factor if DATASETS[dataset].kind == "array" else None


def canonical_overrides(items: tuple[str, ...] | list[str]) -> list[str]:
    """Put ``--set`` items in canonical order.

    ``--set`` items in one order (by key; the last value of a repeated key, as applied), so a
    resume with the same flags in another order is the same study.
    """
    last: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        last[key.strip()] = f"{key.strip()}={text.strip()}" if sep else item
    return [last[k] for k in sorted(last)]


def base_config(dataset: str, *, budget: str, imb_factor: float | None, overrides: tuple[str, ...],
                data_root: str | None) -> RunConfig:
    """The data set's config for every trial; raises UsageError naming a bad ``--set``."""
    smoke = SMOKE_OVERRIDES.get(dataset, ()) if budget == "smoke" else ()
    cfg = preset_config(budget, dataset, imb_for(dataset, imb_factor))
    cfg = apply_overrides(cfg, [*smoke, *overrides])
    if data_root:
        cfg = replace(cfg, data=replace(cfg.data, data_root=data_root))
    return cfg


def table6(dataset: str, imb_factor: float | None) -> Stage2Setting:
    """The paper's setting (Table 6) of a data set, which the study evaluates first."""
    return Stage2Setting.from_config(preset_config("paper", dataset, imb_for(dataset, imb_factor)))


def component_variants(t6: Stage2Setting, mixup: bool) -> list[TrialMember]:
    """The component ablation on one Stage 1 (mixup or plain), at the Table 6 values.

    Shift BN on / off x LAS on / off (LAS off = plain cross-entropy, ε_1 = ε_K = 0), and on
    the mixup Stage 1 also uniform label smoothing (ε_K = ε_1). The variant names say which
    components are on, e.g. ``mixup+shift_bn+las``, ``plain+ce``, ``mixup+shift_bn+uniform_ls``.
    """
    members = []
    for shift_bn, las in product((True, False), (True, False)):
        eps = (t6.eps_1, t6.eps_k) if las else (0.0, 0.0)
        setting = replace(t6, eps_1=eps[0], eps_k=eps[1], shift_bn=shift_bn)
        name = "+".join(["mixup" if mixup else "plain", *(["shift_bn"] if shift_bn else []), "las" if las else "ce"])
        members.append(TrialMember(setting, variant=name))
    if mixup:
        uniform = replace(t6, eps_k=t6.eps_1)
        name = "+".join(["mixup", *(["shift_bn"] if t6.shift_bn else []), "uniform_ls"])
        members.append(TrialMember(uniform, variant=name))
    return members


@dataclass(frozen=True)
class StudySettings:
    """The validated command line, with each data set's config and search space."""

    datasets: tuple[str, ...]
    trials: int
    spaces: dict[str, SearchSpace]
    configs: dict[str, RunConfig]
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
    baseline_bn: tuple[bool | None, ...]
    ablation: str
    stage1_checkpoints: dict[str, str]  # data set -> a finished Stage 1 to use instead of training one
    stage1_workers: int  # data-parallel workers of each Stage 1 (Ray Train when > 1)
    stage1_gpus_per_worker: float | None  # None: 1 if the cluster has GPUs, else 0
    data_root: str | None
    imb_factor: float | None
    overrides: tuple[str, ...]
    grace_period: int
    reduction_factor: float
    max_failures: int
    num_cpus: int | None
    sampler_seed: int
    progress: bool
    trackers: tuple[str, ...] = ()  # --log: tensorboard, mlflow, wandb (study.tracking)
    confirm_best: bool = False  # --confirm-best: the best searched setting rerun on every seed
    stage1_sha256: dict[str, str] = field(default_factory=dict)  # data set -> sha256 of its --stage1-checkpoint
    wait_for_resources: float = 0.0  # --wait-for-resources: seconds a joined cluster may take to add nodes

    @property
    def metric(self) -> tuple[str, ...]:
        """The objectives' trials columns (``val_acc``, ``val_ece``), one or two: always a tuple."""
        return tuple(OBJECTIVES[o][0] for o in self.objectives)

    @property
    def mode(self) -> tuple[str, ...]:
        """``max`` / ``min``, one per objective of :attr:`metric`."""
        return tuple(OBJECTIVES[o][1] for o in self.objectives)

    def imb_for(self, dataset: str) -> float | None:
        """Return the imbalance factor β for ``dataset`` (None for list data sets, which have their own)."""
        return imb_for(dataset, self.imb_factor)

    def epochs_planned(self) -> dict[str, dict[str, int]]:
        """Stage-2 epochs per data set and method (0 for the methods that do not train)."""
        return {d: {m: (cfg.stage2.epochs if m in TRAINED_METHODS else 0)
                    for m in ("mislas", "ce", "crt", "lws", "tau_norm")} for d, cfg in self.configs.items()}

    def baselines(self) -> list[TrialSpec]:
        """The fixed baseline trials of the study.

        The fixed baseline trials: each method x Stage-1 flavour x BN mode x data set x seed
        (the BN mode only for the methods that train in Stage 2).
        """
        out = []
        for seed, d, m, mixup in product(self.seeds, self.datasets, self.methods, self.baseline_mixup):
            if m == "mislas":
                continue
            for bn in (self.baseline_bn if m in TRAINED_METHODS else (None,)):
                out.append(TrialSpec(dataset=d, method=m, mixup=mixup, seed=seed, shift_bn=bn))
        return out

    def ablations(self) -> list[TrialSpec]:
        """The fixed component-ablation trials (``--ablation components``): one per Stage 1."""
        if self.ablation != "components":
            return []
        return [TrialSpec(dataset=d, method="mislas", mixup=mixup, seed=seed,
                          members=tuple(component_variants(table6(d, self.imb_factor), mixup)))
                for seed, d, mixup in product(self.seeds, self.datasets, (True, False))]

    def fixed_trials(self) -> list[TrialSpec]:
        """Trials the study runs as given (not searched): the baselines and the ablation.

        Those on a plain (no-mixup) Stage 1 come first: the search's first trial trains the
        mixup Stage 1, so the two Stage-1 trainings start side by side instead of one after
        the other (a trial waits for a Stage 1 that another trial is training); then the
        larger trials, so that small ones fill the gaps at the end.
        """
        return sorted([*self.baselines(), *self.ablations()], key=lambda t: (t.mixup, -len(t.members)))

    def planned_trials(self) -> int:
        """Rows the finished study holds: every MiSLAS setting, baseline and ablation variant."""
        fixed = sum(len(t.members) for t in self.fixed_trials())
        return len(self.datasets) * (self.trials + len(self.confirm_seeds())) + fixed

    def confirm_seeds(self) -> tuple[int, ...]:
        """The seeds --confirm-best reruns the best searched setting on (none without it)."""
        return self.seeds if self.confirm_best and self.trials > 0 else ()

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same study (compared on resume)."""
        return {
            "datasets": list(self.datasets), "trials": self.trials, "objectives": list(self.objectives),
            "scheduler": self.scheduler, "budget": self.budget, "seeds": list(self.seeds),
            "methods": list(self.methods), "baseline_mixup": list(self.baseline_mixup),
            "baseline_bn": list(self.baseline_bn), "ablation": self.ablation,
            "stage1_checkpoints": dict(self.stage1_checkpoints),
            # the given files' contents: another file behind the same path is another study
            **({"stage1_checkpoint_sha256": dict(self.stage1_sha256)} if self.stage1_sha256 else {}),
            # the worker count is part of the Stage-1 keys; left out at 1 (studies made before it existed)
            **({"stage1_workers": self.stage1_workers} if self.stage1_workers != 1 else {}),
            "imb_factor": self.imb_factor, "overrides": canonical_overrides(self.overrides), "data_root": self.data_root,
            "spaces": {d: s.describe() for d, s in self.spaces.items()},
            "grace_period": self.grace_period, "reduction_factor": self.reduction_factor,
            "sampler_seed": self.sampler_seed, "group_size": self.group_size,
            # left out when off, so studies made before the option keep their identity
            **({"confirm_best": True} if self.confirm_best else {}),
        }
