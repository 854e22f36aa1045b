"""Run configuration: frozen dataclasses built once at the edge, and the paper's presets.

The ``paper`` preset is Table 6 of the seed for a data set and imbalance factor; ``smoke``
is a small budget that finishes on a laptop CPU. ``--set section.key=value`` overrides any
field; unknown keys and badly typed values raise :class:`UsageError` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mislas.errors import UsageError

METHODS = ("mislas", "ce", "crt", "lws", "tau_norm")
LOADERS = ("auto", "torch", "fast")
PRESETS = ("paper", "smoke")
SCHEDULES = ("multistep", "cosine")


@dataclass(frozen=True)
class DataConfig:
    """Which data and how it is cut; ``seed`` fixes the LT subsample (data identity)."""

    dataset: str = "fashion_mnist_lt"
    data_root: str | None = None
    imb_factor: float | None = None
    n_max: int | None = None
    val_per_class: int | None = None
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    seed: int = 0
    num_workers: int | str = "auto"  # "auto": the CPUs Ray / the affinity mask give, minus one
    download: bool = False
    # "auto": in-memory sets (CIFAR, Fashion-MNIST) on the device-resident fast path
    # (mislas.fastpath), list sets through the DataLoader; "torch" forces the DataLoader.
    loader: str = "auto"

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise UsageError(f"data.loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")
        nw = self.num_workers
        if not (nw == "auto" or (isinstance(nw, int) and not isinstance(nw, bool) and nw >= 0)):
            raise UsageError(f"data.num_workers must be an integer >= 0 or 'auto', got {nw!r}")


@dataclass(frozen=True)
class Stage1Config:
    """Representation learning (mixup on or off), Table 6 common and Stage-1 columns."""

    arch: str = "resnet32"
    epochs: int = 200
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 2e-4
    momentum: float = 0.9
    schedule: str = "multistep"
    warmup_epochs: int = 5
    milestones: tuple[int, ...] = (160, 180)
    mixup: bool = True
    mixup_alpha: float = 1.0
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _check_positive(self, "epochs", "lr", "batch_size")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"stage1.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mixup and self.mixup_alpha <= 0:
            raise UsageError(f"stage1.mixup_alpha must be > 0, got {self.mixup_alpha}")


@dataclass(frozen=True)
class Stage2Config:
    """Classifier retraining: MiSLAS (LAS, shift BN, scale, ΔW ratio) or a baseline."""

    method: str = "mislas"
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 2e-4
    momentum: float = 0.9
    eps_1: float = 0.3
    eps_k: float = 0.0
    form: str = "concave"
    p: float | None = None
    las_target: str = "paper"
    dw_ratio: float = 0.5
    shift_bn: bool = True
    samples_per_class: int = 4
    tau_grid: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(21))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        _check_positive(self, "lr", "batch_size", "dw_ratio", "samples_per_class")
        if self.epochs < 0:
            raise UsageError(f"stage2.epochs must be >= 0, got {self.epochs}")


@dataclass(frozen=True)
class EvalConfig:
    """Many/Medium/Few thresholds (documented definition) or reference index ranges."""

    many_above: int = 100
    few_below: int = 20
    index_ranges: tuple[int, int] | None = None
    n_bins: int = 15
    batch_size: int = 512


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_positive(obj: Any, *names: str) -> None:
    section = "stage1" if isinstance(obj, Stage1Config) else "stage2"
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise UsageError(f"{section}.{name} must be > 0, got {value}")


# --- Table 6 -----------------------------------------------------------------------------

# (ε_1, ε_K, ΔW ratio) for CIFAR-LT by imbalance factor; Table 6 of the seed.
_CIFAR_STAGE2 = {
    ("cifar10_lt", 10.0): (0.1, 0.0, 0.2),
    ("cifar10_lt", 50.0): (0.2, 0.0, 0.2),
    ("cifar10_lt", 100.0): (0.3, 0.0, 0.5),
    ("cifar100_lt", 10.0): (0.2, 0.0, 0.1),
    ("cifar100_lt", 50.0): (0.3, 0.0, 0.1),
    ("cifar100_lt", 100.0): (0.4, 0.1, 0.2),
}

# Large data sets: (arch, Stage-1 epochs, weight decay, Stage-2 epochs, ε_1, ε_K, ΔW ratio).
_LARGE = {
    "imagenet_lt": ("resnet50", 180, 5e-4, 10, 0.3, 0.0, 0.05),
    "places_lt": ("resnet152_places", 90, 5e-4, 10, 0.4, 0.1, 0.05),
    "inat2018": ("resnet50", 200, 1e-4, 30, 0.4, 0.0, 0.05),
}

DEFAULT_IMB_FACTOR = {"cifar10_lt": 100.0, "cifar100_lt": 100.0, "fashion_mnist_lt": 100.0}


def _nearest_cifar_setting(dataset: str, imb_factor: float) -> tuple[float, float, float]:
    """Table 6 row for β, or the row of the nearest tabulated β (documented in README)."""
    betas = sorted(b for d, b in _CIFAR_STAGE2 if d == dataset)
    nearest = min(betas, key=lambda b: abs(b - imb_factor))
    return _CIFAR_STAGE2[(dataset, nearest)]


def paper_config(dataset: str, imb_factor: float | None = None) -> RunConfig:
    """Table 6 for the data set (and β for CIFAR-LT); Fashion-MNIST-LT follows CIFAR-10-LT."""
    imb = imb_factor if imb_factor is not None else DEFAULT_IMB_FACTOR.get(dataset)
    data = DataConfig(dataset=dataset, imb_factor=imb)
    if dataset in ("cifar10_lt", "cifar100_lt", "fashion_mnist_lt"):
        table_set = "cifar10_lt" if dataset == "fashion_mnist_lt" else dataset
        eps_1, eps_k, ratio = _nearest_cifar_setting(table_set, float(imb or 100.0))
        return RunConfig(
            data=data,
            stage1=Stage1Config(arch="resnet32", epochs=200, lr=0.1, batch_size=128, weight_decay=2e-4,
                                schedule="multistep", mixup_alpha=1.0),
            stage2=Stage2Config(epochs=10, lr=0.1, batch_size=128, weight_decay=2e-4, eps_1=eps_1,
                                eps_k=eps_k, dw_ratio=ratio, shift_bn=dataset != "cifar10_lt"),
        )
    if dataset in _LARGE:
        arch, s1_epochs, wd, s2_epochs, eps_1, eps_k, ratio = _LARGE[dataset]
        return RunConfig(
            data=data,
            stage1=Stage1Config(arch=arch, epochs=s1_epochs, lr=0.1, batch_size=256, weight_decay=wd,
                                schedule="cosine", warmup_epochs=0, milestones=(), mixup_alpha=0.2),
            stage2=Stage2Config(epochs=s2_epochs, lr=0.1, batch_size=256, weight_decay=wd, eps_1=eps_1,
                                eps_k=eps_k, dw_ratio=ratio, shift_bn=True),
        )
    raise UsageError(f"unknown dataset {dataset!r}; allowed: {', '.join(sorted([*DEFAULT_IMB_FACTOR, *_LARGE]))}")


def smoke_config(dataset: str, imb_factor: float | None = None) -> RunConfig:
    """A CPU-sized budget with the paper's Stage-2 knobs: a few epochs, same schedules' shapes."""
    cfg = paper_config(dataset, imb_factor)
    s1 = replace(cfg.stage1, epochs=12, warmup_epochs=1 if cfg.stage1.warmup_epochs else 0,
                 milestones=(8, 10) if cfg.stage1.milestones else ())
    s2 = replace(cfg.stage2, epochs=3)
    return replace(cfg, stage1=s1, stage2=s2)


def preset_config(preset: str, dataset: str, imb_factor: float | None = None) -> RunConfig:
    if preset == "paper":
        return paper_config(dataset, imb_factor)
    if preset == "smoke":
        return smoke_config(dataset, imb_factor)
    raise UsageError(f"preset must be one of {PRESETS}, got {preset!r}")


# --- overrides ---------------------------------------------------------------------------

def _allowed_keys(cfg: RunConfig) -> list[str]:
    keys = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(f"{f.name}.{sub.name}" for sub in fields(value))
        else:
            keys.append(f.name)
    return keys


def _convert(key: str, text: str, annotation: Any) -> Any:
    """Parse ``text`` into the field's declared type; errors name the key."""
    ann = annotation
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", ""):
            if type(None) in args:
                return None
        non_none = [a for a in args if a is not type(None)]
        for arm in non_none[:-1]:  # e.g. ``int | str``: the first type that reads the text
            try:
                return _convert(key, text, arm)
            except UsageError:
                pass
        return _convert(key, text, non_none[-1])
    try:
        if ann is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if ann is int:
            return int(text)
        if ann is float:
            return float(text)
        if ann is str:
            return text
        if origin is tuple:
            parts = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
            inner = args[0] if args else str
            return tuple(_convert(key, t.strip(), inner) for t in parts)
    except ValueError:
        raise UsageError(f"--set {key}: cannot read {text!r} as {getattr(ann, '__name__', ann)}") from None
    raise UsageError(f"--set {key}: unsupported type {ann}")


def apply_overrides(cfg: RunConfig, assignments: Iterable[str]) -> RunConfig:
    """Apply ``section.key=value`` strings (``seed=1`` for top-level keys)."""
    for item in assignments:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        allowed = _allowed_keys(cfg)
        if key not in allowed:
            raise UsageError(f"--set: unknown key {key!r}; allowed: {', '.join(allowed)}")
        if "." in key:
            section, name = key.split(".", 1)
            sub = getattr(cfg, section)
            ann = typing.get_type_hints(type(sub))[name]
            cfg = replace(cfg, **{section: replace(sub, **{name: _convert(key, text.strip(), ann)})})
        else:
            ann = typing.get_type_hints(RunConfig)[key]
            cfg = replace(cfg, **{key: _convert(key, text.strip(), ann)})
    return cfg


def from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from :meth:`RunConfig.to_dict` output (checkpoints, Parquet)."""
    def build(cls: type, values: Mapping[str, Any]) -> Any:
        kwargs = {}
        for f in fields(cls):
            if f.name in values:
                v = values[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    return RunConfig(
        data=build(DataConfig, raw.get("data", {})),
        stage1=build(Stage1Config, raw.get("stage1", {})),
        stage2=build(Stage2Config, raw.get("stage2", {})),
        eval=build(EvalConfig, raw.get("eval", {})),
        seed=int(raw.get("seed", 0)),
        device=str(raw.get("device", "auto")),
        channels_last=bool(raw.get("channels_last", True)),
    )
