"""The presets: Table 6 of the seed (``paper``), the reference's configs, a CPU budget (``smoke``).

``paper`` follows Table 6 per data set and imbalance factor; ``reference`` the reference code's
own config files where they differ from the table; ``smoke`` a budget that finishes on a CPU.
"""

from __future__ import annotations

from dataclasses import replace

from mislas.config.sections import PRESETS, Arch, DataConfig, EvalConfig, RunConfig, Stage1Config, Stage2Config
from mislas.errors import UsageError
from mislas.spec import LasTarget

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
_LARGE: dict[str, tuple[Arch, int, float, int, float, float, float]] = {
    "imagenet_lt": ("resnet50", 180, 5e-4, 10, 0.3, 0.0, 0.05),
    "places_lt": ("resnet152_places", 90, 5e-4, 10, 0.4, 0.1, 0.05),
    "inat2018": ("resnet50", 200, 1e-4, 30, 0.4, 0.0, 0.05),
}

DEFAULT_IMB_FACTOR = {"cifar10_lt": 100.0, "cifar100_lt": 100.0, "fashion_mnist_lt": 100.0}

# Many / Medium / Few as the reference's published CIFAR numbers count them: hard-coded class-index
# ranges after sorting by count (n_many, n_medium; the rest Few). The paper's thresholds (> 100,
# 20–100, < 20 images) give 35/35/30 classes on CIFAR-100-LT β=100, the reference's ranges 36/35/29,
# so the presets use the ranges where our tables sit beside those published figures.
REFERENCE_INDEX_RANGES: dict[str, tuple[int, int]] = {"cifar10_lt": (3, 4), "cifar100_lt": (36, 35)}

# Where the reference's own config differs from the paper's Table 6 (preset "reference" follows the
# config, "paper" the table): iNaturalist 2018's Stage 2, ε_1 0.3 and 10 epochs in
# config/ina2018/ina2018_resnet50_stage2_mislas.yaml at MiSLAS 0fc381e, ε_1 0.4 and 30 epochs in
# Table 6. Every other data set's reference config agrees with Table 6.
REFERENCE_CONFIG_STAGE2: dict[str, dict[str, float | int]] = {"inat2018": {"eps_1": 0.3, "epochs": 10}}

# The published numbers came from the reference code, whose LAS spreads ε over all K classes
# ((1−ε)·NLL + ε·mean_k(−log p_k)); Eq. 9 of the paper ("paper") stays selectable.
PAPER_LAS_TARGET: LasTarget = "reference"


def _nearest_cifar_setting(dataset: str, imb_factor: float) -> tuple[float, float, float]:
    """Table 6 row for β, or the row of the nearest tabulated β (documented in docs/method.md)."""
    betas = sorted(b for d, b in _CIFAR_STAGE2 if d == dataset)
    nearest = min(betas, key=lambda b: abs(b - imb_factor))
    return _CIFAR_STAGE2[(dataset, nearest)]


def paper_config(dataset: str, imb_factor: float | None = None) -> RunConfig:
    """Table 6 for the data set (and β for CIFAR-LT).

    Fashion-MNIST-LT follows CIFAR-10-LT's row whole (10 classes, ResNet-32, shift BN off), as
    the closest tabulated setting.

    Stage 2 is the setting the published numbers came from: the reference code's LAS target,
    its epoch length (``epoch_length="reference"``), no Stage-2 mixup, and Table 6's shift BN
    for MiSLAS (off on CIFAR-10-LT, on elsewhere).
    """
    imb = imb_factor if imb_factor is not None else DEFAULT_IMB_FACTOR.get(dataset)
    data = DataConfig(dataset=dataset, imb_factor=imb)
    if dataset in ("cifar10_lt", "cifar100_lt", "fashion_mnist_lt"):
        table_set = "cifar10_lt" if dataset == "fashion_mnist_lt" else dataset
        eps_1, eps_k, ratio = _nearest_cifar_setting(table_set, float(imb or 100.0))
        ranges = REFERENCE_INDEX_RANGES.get(dataset)
        return RunConfig(
            data=data,
            eval=EvalConfig(index_ranges=ranges) if ranges else EvalConfig(),
            stage1=Stage1Config(arch="resnet32", epochs=200, lr=0.1, batch_size=128, weight_decay=2e-4,
                                schedule="multistep", mixup_alpha=1.0),
            stage2=Stage2Config(epochs=10, lr=0.1, batch_size=128, weight_decay=2e-4, eps_1=eps_1,
                                eps_k=eps_k, dw_ratio=ratio, shift_bn=table_set != "cifar10_lt",
                                las_target=PAPER_LAS_TARGET, epoch_length="reference", mixup_alpha=1.0),
        )
    if dataset in _LARGE:
        arch, s1_epochs, wd, s2_epochs, eps_1, eps_k, ratio = _LARGE[dataset]
        return RunConfig(
            data=data,
            stage1=Stage1Config(arch=arch, epochs=s1_epochs, lr=0.1, batch_size=256, weight_decay=wd,
                                schedule="cosine", warmup_epochs=0, milestones=(), mixup_alpha=0.2),
            stage2=Stage2Config(epochs=s2_epochs, lr=0.1, batch_size=256, weight_decay=wd, eps_1=eps_1,
                                eps_k=eps_k, dw_ratio=ratio, shift_bn=True, las_target=PAPER_LAS_TARGET,
                                epoch_length="reference", mixup_alpha=0.2),
        )
    raise UsageError(f"unknown dataset {dataset!r}; allowed: {', '.join(sorted([*DEFAULT_IMB_FACTOR, *_LARGE]))}")


def smoke_config(dataset: str, imb_factor: float | None = None) -> RunConfig:
    """A CPU-sized budget with the paper's Stage-2 knobs: a few epochs, same schedules' shapes."""
    cfg = paper_config(dataset, imb_factor)
    s1 = replace(cfg.stage1, epochs=12, warmup_epochs=1 if cfg.stage1.warmup_epochs else 0,
                 milestones=(8, 10) if cfg.stage1.milestones else ())
    s2 = replace(cfg.stage2, epochs=3)
    return replace(cfg, stage1=s1, stage2=s2)


def reference_config(dataset: str, imb_factor: float | None = None) -> RunConfig:
    """The reference code's own config for the data set.

    Table 6 (:func:`paper_config`) except where the config file says otherwise
    (:data:`REFERENCE_CONFIG_STAGE2`: iNaturalist's Stage 2).
    """
    cfg = paper_config(dataset, imb_factor)
    changes = REFERENCE_CONFIG_STAGE2.get(dataset)
    return replace(cfg, stage2=replace(cfg.stage2, **changes)) if changes else cfg  # type: ignore[arg-type]


def preset_config(preset: str, dataset: str, imb_factor: float | None = None) -> RunConfig:
    """The run config of a named preset (paper, reference or smoke) for ``dataset``."""
    if preset == "paper":
        return paper_config(dataset, imb_factor)
    if preset == "reference":
        return reference_config(dataset, imb_factor)
    if preset == "smoke":
        return smoke_config(dataset, imb_factor)
    raise UsageError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
