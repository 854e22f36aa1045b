"""The run config's sections: frozen dataclasses, every value checked when built.

``__post_init__`` checks each field (:mod:`mislas.config.checks`), so a bad config fails at the
edge, before any data is loaded. Choice fields are ``Literal`` types; the tuples (``METHODS``
...) are derived from them with ``typing.get_args`` so the two cannot drift apart. The names
the report shares (methods, forms, targets, the split rule) live in :mod:`mislas.spec`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from mislas.config.checks import _bool, _choice, _float, _int, _is_int, _optional_str
from mislas.errors import UsageError
from mislas.spec import DEFAULT_N_BINS, FORMS, METHODS, TARGETS, TRAINED_METHODS, Form, LasTarget, Method, SplitRule

Loader = Literal["auto", "torch", "fast"]
Preset = Literal["paper", "reference", "smoke"]
Schedule = Literal["multistep", "cosine"]
Arch = Literal["resnet32", "resnet50", "resnet101", "resnet152", "resnet152_places"]
EpochLengthRule = Literal["reference", "sampler"]
Stage2Schedule = Literal["cosine", "cosine_kang"]
EpochLength = int | EpochLengthRule

LOADERS: tuple[str, ...] = get_args(Loader)
PRESETS: tuple[str, ...] = get_args(Preset)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
ARCHS: tuple[str, ...] = get_args(Arch)
EPOCH_LENGTH_RULES: tuple[str, ...] = get_args(EpochLengthRule)
STAGE2_SCHEDULES: tuple[str, ...] = get_args(Stage2Schedule)

# Shift BN by method when ``stage2.shift_bn`` is None. MiSLAS: the reference configs turn it
# on everywhere but CIFAR-10-LT (the presets set the Table-6 value explicitly; on for a bare
# Stage2Config). cRT / LWS: Kang et al.'s code (classifier-balancing f162ade, run_networks.py) freezes
# the feature model's parameters (``init_models``) but calls ``model.train()`` on every network
# each epoch (lines 248-249), so BN statistics re-estimate on class-balanced batches.
DEFAULT_SHIFT_BN: dict[str, bool] = {"mislas": True, "crt": True, "lws": True, "ce": False, "tau_norm": False}

# Stage-2 cosine schedule by method when ``stage2.lr_schedule`` is None, as each method's own code
# ran it. "cosine": epoch e (1-based) of E at ½·lr·(1 + cos(π(e−1)/E)), set at the start of the
# epoch (MiSLAS 0fc381e, train_stage2.py ``adjust_learning_rate``). "cosine_kang": ½·lr·(1 +
# cos(πe/E)), the last epoch at lr 0: Kang et al.'s run_networks.py (classifier-balancing f162ade)
# calls ``scheduler.step()`` (CosineAnnealingLR, T_max = E) at the start of each epoch, which under
# torch >= 1.1 advances the schedule before the epoch's first step.
DEFAULT_STAGE2_SCHEDULE: dict[str, str] = {"mislas": "cosine", "crt": "cosine_kang", "lws": "cosine_kang"}

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_epoch_length(key: str, value: object) -> None:
    """``reference``, ``sampler`` or a positive integer number of optimizer steps."""
    if not ((isinstance(value, str) and value in EPOCH_LENGTH_RULES) or (_is_int(value) and
                                                                          typing.cast(int, value) >= 1)):
        raise UsageError(f"{key} must be one of {', '.join(EPOCH_LENGTH_RULES)} or an integer >= 1 "
                         f"(optimizer steps per epoch), got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which data and how it is cut; ``seed`` fixes the LT subsample (data identity)."""

    dataset: str = "fashion_mnist_lt"
    data_root: str | None = None
    imb_factor: float | None = None
    n_max: int | None = None
    val_per_class: int | None = None
    # array sets: evaluate on the first N test images of each class (file order), for quick
    # smoke runs; None (default, the paper's protocol) keeps the whole test set
    test_per_class: int | None = None
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    seed: int = 0
    num_workers: int | Literal["auto"] = "auto"  # "auto": the CPUs Ray / the affinity mask give, minus one
    download: bool = False
    # "auto": in-memory sets (CIFAR, Fashion-MNIST) on the device-resident fast path
    # (mislas.fastpath), list sets through the DataLoader; "torch" forces the DataLoader.
    loader: Loader = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise UsageError(f"data.dataset must be a data set name, got {self.dataset!r}")
        for name in ("data_root", "train_list", "val_list", "test_list"):
            _optional_str(f"data.{name}", getattr(self, name))
        if self.imb_factor is not None:
            _float("data.imb_factor", self.imb_factor, low=1.0)
        if self.n_max is not None:
            _int("data.n_max", self.n_max, low=1)
        if self.val_per_class is not None:
            _int("data.val_per_class", self.val_per_class, low=0)
        if self.test_per_class is not None:
            _int("data.test_per_class", self.test_per_class, low=1)
        _int("data.seed", self.seed)
        nw = self.num_workers
        if not (nw == "auto" or (_is_int(nw) and int(nw) >= 0)):
            raise UsageError(f"data.num_workers must be an integer >= 0 or 'auto', got {nw!r}")
        _bool("data.download", self.download)
        _choice("data.loader", self.loader, LOADERS)


@dataclass(frozen=True)
class Stage1Config:
    """Representation learning (mixup on or off), Table 6 common and Stage-1 columns."""

    arch: Arch = "resnet32"
    epochs: int = 200
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 2e-4
    momentum: float = 0.9
    schedule: Schedule = "multistep"
    warmup_epochs: int = 5
    milestones: tuple[int, ...] = (160, 180)
    mixup: bool = True
    mixup_alpha: float = 1.0
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _choice("stage1.arch", self.arch, ARCHS)
        _int("stage1.epochs", self.epochs, low=1)
        _float("stage1.lr", self.lr, low=0.0, low_open=True)
        _int("stage1.batch_size", self.batch_size, low=1)
        _float("stage1.weight_decay", self.weight_decay, low=0.0)
        _float("stage1.momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _choice("stage1.schedule", self.schedule, SCHEDULES)
        _int("stage1.warmup_epochs", self.warmup_epochs)
        if not isinstance(self.milestones, tuple):
            raise UsageError(f"stage1.milestones must be a tuple of integers >= 1, got {self.milestones!r}")
        for m in self.milestones:
            _int("stage1.milestones", m, low=1)
        _bool("stage1.mixup", self.mixup)
        if self.mixup:
            _float("stage1.mixup_alpha", self.mixup_alpha, low=0.0, low_open=True)
        else:
            _float("stage1.mixup_alpha", self.mixup_alpha, low=0.0)
        _optional_str("stage1.pretrained", self.pretrained)


@dataclass(frozen=True)
class Stage2Config:
    """Classifier retraining: MiSLAS (LAS, shift BN, scale, ΔW ratio) or a baseline.

    ``shift_bn``: the frozen backbone runs in train mode (BN statistics re-estimate on the
    class-balanced batches) for every method that trains; None = the method's default
    (:func:`effective_shift_bn`). ``epoch_length``: optimizer steps per epoch, see
    :func:`mislas.data.samplers.class_aware_epoch_samples`. ``mixup``: mixup in Stage 2 (the
    reference's switch, off in all its configs) with ``mixup_alpha``. ``lr_schedule``: "cosine" or
    "cosine_kang" (:data:`DEFAULT_STAGE2_SCHEDULE`); None = the method's own code's schedule
    (:func:`effective_stage2_schedule`).
    """

    method: Method = "mislas"
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 2e-4
    momentum: float = 0.9
    eps_1: float = 0.3
    eps_k: float = 0.0
    form: Form = "concave"
    p: float | None = None
    las_target: LasTarget = "paper"
    dw_ratio: float = 0.5
    shift_bn: bool | None = None
    samples_per_class: int = 4
    tau_grid: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(21))
    epoch_length: EpochLength = "reference"
    mixup: bool = False
    mixup_alpha: float = 1.0
    lr_schedule: Stage2Schedule | None = None

    def __post_init__(self) -> None:
        _choice("stage2.method", self.method, METHODS)
        if self.lr_schedule is not None:
            _choice("stage2.lr_schedule", self.lr_schedule, STAGE2_SCHEDULES)
        _int("stage2.epochs", self.epochs, low=0)
        _float("stage2.lr", self.lr, low=0.0, low_open=True)
        _int("stage2.batch_size", self.batch_size, low=1)
        _float("stage2.weight_decay", self.weight_decay, low=0.0)
        _float("stage2.momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _float("stage2.eps_1", self.eps_1, low=0.0, high=1.0, high_open=True)
        _float("stage2.eps_k", self.eps_k, low=0.0, high=1.0, high_open=True)
        if self.eps_k > self.eps_1:
            raise UsageError(f"stage2.eps_k <= stage2.eps_1 must hold, got eps_k={self.eps_k!r}, eps_1={self.eps_1!r}")
        _choice("stage2.form", self.form, FORMS)
        if self.form == "exp" and self.p is None:
            raise UsageError("stage2.p must be a finite number > 0 when stage2.form is exp, got None")
        if self.p is not None:  # read by form exp only (Eq. 7), checked whatever the form
            _float("stage2.p", self.p, low=0.0, low_open=True)
        _choice("stage2.las_target", self.las_target, TARGETS)
        _float("stage2.dw_ratio", self.dw_ratio, low=0.0, low_open=True)
        _bool("stage2.shift_bn", self.shift_bn, optional=True)
        _int("stage2.samples_per_class", self.samples_per_class, low=1)
        if not isinstance(self.tau_grid, tuple) or not self.tau_grid:
            raise UsageError(f"stage2.tau_grid must be a non-empty tuple of numbers >= 0, got {self.tau_grid!r}")
        for tau in self.tau_grid:
            _float("stage2.tau_grid", tau, low=0.0)
        check_epoch_length("stage2.epoch_length", self.epoch_length)
        _bool("stage2.mixup", self.mixup)
        if self.mixup:
            _float("stage2.mixup_alpha", self.mixup_alpha, low=0.0, low_open=True)
        else:
            _float("stage2.mixup_alpha", self.mixup_alpha, low=0.0)


@dataclass(frozen=True)
class EvalConfig:
    """Many/Medium/Few thresholds (documented definition) or reference index ranges (:attr:`split_rule`)."""

    many_above: int = 100
    few_below: int = 20
    index_ranges: tuple[int, int] | None = None
    n_bins: int = DEFAULT_N_BINS
    batch_size: int = 512

    def __post_init__(self) -> None:
        _int("eval.many_above", self.many_above)
        _int("eval.few_below", self.few_below)
        if self.few_below > self.many_above + 1:
            raise UsageError(f"eval.few_below <= eval.many_above + 1 must hold, got few_below={self.few_below}, "
                             f"many_above={self.many_above}")
        if self.index_ranges is not None:
            r = self.index_ranges
            if not (isinstance(r, tuple) and len(r) == 2 and all(_is_int(v) and v >= 0 for v in r)):
                raise UsageError(f"eval.index_ranges must be None or two integers >= 0 (n_many, n_medium), got {r!r}")
        _int("eval.n_bins", self.n_bins, low=1)
        _int("eval.batch_size", self.batch_size, low=1)

    @property
    def split_rule(self) -> SplitRule:
        """The Many / Medium / Few rule these fields set, as the metrics take it."""
        return SplitRule(self.many_above, self.few_below, self.index_ranges)


@dataclass(frozen=True)
class RunConfig:
    """Everything one two-stage run needs; serialised into checkpoints and metrics.json."""

    data: DataConfig = field(default_factory=DataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True

    def __post_init__(self) -> None:
        for name, cls in (("data", DataConfig), ("stage1", Stage1Config), ("stage2", Stage2Config),
                          ("eval", EvalConfig)):
            if not isinstance(getattr(self, name), cls):
                raise UsageError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        _int("seed", self.seed)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise UsageError(f"device must be one of auto, cpu, cuda, cuda:N, mps, got {self.device!r}")
        _bool("channels_last", self.channels_last)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (:func:`dataclasses.asdict`)."""
        return dataclasses.asdict(self)


def effective_shift_bn(cfg: RunConfig | Stage2Config) -> bool:
    """Whether the frozen backbone runs in train mode in Stage 2 (BN statistics re-estimate).

    ``stage2.shift_bn`` when set; else the method's default (:data:`DEFAULT_SHIFT_BN`). Methods
    with no Stage-2 training (``ce``, ``tau_norm``) never shift BN, whatever the field says.
    """
    s2 = cfg.stage2 if isinstance(cfg, RunConfig) else cfg
    if s2.method not in TRAINED_METHODS:
        return False
    return DEFAULT_SHIFT_BN[s2.method] if s2.shift_bn is None else s2.shift_bn


def effective_stage2_schedule(cfg: RunConfig | Stage2Config) -> str:
    """The Stage-2 cosine variant a run uses.

    ``stage2.lr_schedule`` when set, else the method's default (:data:`DEFAULT_STAGE2_SCHEDULE`:
    Kang et al.'s for cRT/LWS, MiSLAS's for MiSLAS).
    """
    s2 = cfg.stage2 if isinstance(cfg, RunConfig) else cfg
    if s2.lr_schedule is not None:
        return s2.lr_schedule
    return DEFAULT_STAGE2_SCHEDULE.get(s2.method, "cosine")


def with_method(cfg: RunConfig, method: str) -> RunConfig:
    """``cfg`` with Stage-2 method ``method``; a preset's MiSLAS-only shift BN value is dropped.

    Why: the presets are MiSLAS's Table 6 rows, whose ``shift_bn`` (off on CIFAR-10-LT) is
    MiSLAS's choice; a baseline takes its own default instead (cRT / LWS: on, as Kang et al.'s
    code). Apply ``--set`` overrides after this, so an explicit ``stage2.shift_bn`` wins.
    """
    _choice("stage2.method", method, METHODS)
    shift_bn = cfg.stage2.shift_bn if method == "mislas" else None
    return replace(cfg, stage2=replace(cfg.stage2, method=typing.cast(Method, method), shift_bn=shift_bn))
