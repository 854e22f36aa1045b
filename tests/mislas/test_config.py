"""mislas.config: every value checked when the config is built, errors naming the key; presets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, get_args

import pytest

from mislas import config, las, models
from mislas.config import (
    DataConfig,
    EvalConfig,
    RunConfig,
    Stage1Config,
    Stage2Config,
    apply_overrides,
    effective_shift_bn,
    from_dict,
    paper_config,
    with_method,
)
from mislas.errors import UsageError


def test_choice_tuples_come_from_the_literals() -> None:
    assert config.METHODS == ("mislas", "ce", "crt", "lws", "tau_norm") == get_args(config.Method)
    assert config.LOADERS == get_args(config.Loader) and config.PRESETS == get_args(config.Preset)
    assert config.SCHEDULES == get_args(config.Schedule)
    assert set(get_args(config.Form)) == set(las.FORMS) and set(get_args(config.LasTarget)) == set(las.TARGETS)
    assert config.ARCHS == models.ARCHS


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("section", "values", "needle"),
    [
        (Stage2Config, {"eps_1": NAN}, "stage2.eps_1 must be a finite number in [0, 1), got nan"),
        (Stage2Config, {"eps_1": 1.0}, "stage2.eps_1 must be a finite number in [0, 1), got 1.0"),
        (Stage2Config, {"eps_k": -0.1}, "stage2.eps_k must be a finite number in [0, 1)"),
        (Stage2Config, {"eps_1": 0.1, "eps_k": 0.2}, "stage2.eps_k <= stage2.eps_1 must hold"),
        (Stage2Config, {"form": "exp"}, "stage2.p must be a finite number > 0 when stage2.form is exp, got None"),
        (Stage2Config, {"form": "exp", "p": 0.0}, "stage2.p must be a finite number > 0, got 0.0"),
        (Stage2Config, {"form": "cubic"}, "stage2.form must be one of concave, linear, convex, exp"),
        (Stage2Config, {"las_target": "kang"}, "stage2.las_target must be one of paper, reference"),
        (Stage2Config, {"dw_ratio": 0.0}, "stage2.dw_ratio must be a finite number > 0"),
        (Stage2Config, {"lr": INF}, "stage2.lr must be a finite number > 0, got inf"),
        (Stage2Config, {"momentum": 1.0}, "stage2.momentum must be a finite number in [0, 1)"),
        (Stage2Config, {"weight_decay": -1e-4}, "stage2.weight_decay must be a finite number >= 0"),
        (Stage2Config, {"epochs": -1}, "stage2.epochs must be an integer >= 0"),
        (Stage2Config, {"epochs": 2.5}, "stage2.epochs must be an integer >= 0"),
        (Stage2Config, {"method": "focal"}, "stage2.method must be one of mislas, ce, crt, lws, tau_norm"),
        (Stage2Config, {"epoch_length": 0}, "stage2.epoch_length must be one of reference, sampler or an integer >= 1"),
        (Stage2Config, {"epoch_length": "full"}, "stage2.epoch_length must be one of reference, sampler"),
        (Stage2Config, {"shift_bn": "yes"}, "stage2.shift_bn must be true or false or None"),
        (Stage2Config, {"mixup": True, "mixup_alpha": 0.0}, "stage2.mixup_alpha must be a finite number > 0"),
        (Stage2Config, {"tau_grid": (0.5, NAN)}, "stage2.tau_grid must be a finite number >= 0"),
        (Stage1Config, {"lr": NAN}, "stage1.lr must be a finite number > 0, got nan"),
        (Stage1Config, {"epochs": 0}, "stage1.epochs must be an integer >= 1"),
        (Stage1Config, {"arch": "vgg16"}, "stage1.arch must be one of resnet32"),
        (Stage1Config, {"schedule": "step"}, "stage1.schedule must be one of multistep, cosine"),
        (Stage1Config, {"mixup_alpha": -1.0}, "stage1.mixup_alpha must be a finite number > 0"),
        (DataConfig, {"imb_factor": NAN}, "data.imb_factor must be a finite number >= 1, got nan"),
        (DataConfig, {"seed": -1}, "data.seed must be an integer >= 0"),
        (DataConfig, {"loader": "gpu"}, "data.loader must be one of auto, torch, fast"),
        (EvalConfig, {"n_bins": 0}, "eval.n_bins must be an integer >= 1"),
        (EvalConfig, {"few_below": 200}, "eval.few_below <= eval.many_above + 1 must hold"),
    ],
)
def test_bad_values_are_refused_naming_the_key(section: type, values: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError) as info:
        section(**values)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_run_level_values() -> None:
    with pytest.raises(UsageError, match="^seed must be an integer >= 0, got -3$"):
        RunConfig(seed=-3)
    with pytest.raises(UsageError, match="device must be one of auto, cpu, cuda, cuda:N, mps, got 'gpu0'"):
        RunConfig(device="gpu0")
    assert RunConfig(device="cuda:1").device == "cuda:1"  # availability is resolve_device's to check


@pytest.mark.parametrize(
    ("assignment", "needle"),
    [
        ("stage2.eps_1=nan", "stage2.eps_1 must be a finite number in [0, 1), got nan"),
        ("stage2.eps_1=abc", "--set stage2.eps_1: cannot read 'abc' as float"),
        ("stage2.epoch_length=full", "--set stage2.epoch_length: cannot read 'full' as int or 'reference' or 'sampler'"),
        ("stage2.method=focal", "--set stage2.method: 'focal' is not one of mislas, ce, crt, lws, tau_norm"),
        ("stage2.shift_bn=maybe", "--set stage2.shift_bn: cannot read 'maybe' as bool"),
        ("seed=-1", "seed must be an integer >= 0"),
        ("stage2.epsilon=0.1", "--set: unknown key 'stage2.epsilon'"),
    ],
)
def test_set_errors_name_the_key(assignment: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        apply_overrides(RunConfig(), [assignment])
    assert needle in str(info.value)


def test_set_reads_the_new_fields() -> None:
    cfg = apply_overrides(RunConfig(), ["stage2.epoch_length=7", "stage2.shift_bn=none", "stage2.mixup=on",
                                        "stage2.mixup_alpha=0.2"])
    assert cfg.stage2.epoch_length == 7 and cfg.stage2.shift_bn is None and cfg.stage2.mixup
    assert apply_overrides(cfg, ["stage2.epoch_length=sampler"]).stage2.epoch_length == "sampler"


def test_paper_preset_is_the_setting_of_the_published_numbers() -> None:
    for dataset in ("cifar10_lt", "cifar100_lt", "places_lt", "imagenet_lt", "inat2018"):
        s2 = paper_config(dataset).stage2
        assert s2.las_target == "reference" and s2.epoch_length == "reference" and not s2.mixup
    assert paper_config("cifar10_lt").stage2.shift_bn is False and paper_config("places_lt").stage2.shift_bn is True
    assert paper_config("places_lt").stage2.mixup_alpha == paper_config("places_lt").stage1.mixup_alpha == 0.2
    assert Stage2Config().las_target == "paper"  # Eq. 9 stays selectable (and is the bare default)


def test_with_method_drops_mislas_shift_bn_for_baselines() -> None:
    cifar10 = paper_config("cifar10_lt")  # Table 6: no shift BN for MiSLAS on CIFAR-10-LT
    assert effective_shift_bn(cifar10) is False
    assert effective_shift_bn(with_method(cifar10, "crt")) is True  # Kang et al.'s default for cRT
    assert with_method(cifar10, "mislas").stage2.shift_bn is False
    explicit = apply_overrides(with_method(cifar10, "lws"), ["stage2.shift_bn=false"])
    assert effective_shift_bn(explicit) is False
    with pytest.raises(UsageError, match="stage2.method"):
        with_method(cifar10, "focal")


def test_from_dict_round_trip_and_validation() -> None:
    cfg = replace(paper_config("places_lt"), seed=3)
    assert from_dict(cfg.to_dict()) == cfg
    raw = cfg.to_dict()
    raw["stage2"]["eps_1"] = float("nan")
    with pytest.raises(UsageError, match="stage2.eps_1"):
        from_dict(raw)


def test_inat_stage2_source_is_explicit_table6_by_default() -> None:
    from mislas.config import preset_config

    table6, ref = preset_config("paper", "inat2018").stage2, preset_config("reference", "inat2018").stage2
    assert (table6.eps_1, table6.epochs) == (0.4, 30)  # Table 6
    assert (ref.eps_1, ref.epochs) == (0.3, 10)  # config/ina2018/ina2018_resnet50_stage2_mislas.yaml
    assert preset_config("reference", "imagenet_lt") == preset_config("paper", "imagenet_lt")


def test_cifar_presets_count_splits_as_the_references_published_numbers() -> None:
    """CIFAR-100-LT β=100 (n_i = ⌊500·0.01^(i/99)⌋): thresholds give 35/35/30 classes, the
    reference's index ranges 36/35/29, which the CIFAR presets use."""
    import numpy as np

    from mislas.splits import class_splits

    counts = [int(500 * 0.01 ** (i / 99)) for i in range(100)]
    by_threshold = class_splits(counts)
    assert [int(np.sum(by_threshold[k])) if by_threshold[k].dtype == bool else len(by_threshold[k])
            for k in ("many", "medium", "few")] == [35, 35, 30]
    ev = paper_config("cifar100_lt").eval
    by_range = class_splits(counts, ev.split_rule)
    assert [int(np.sum(by_range[k])) if by_range[k].dtype == bool else len(by_range[k])
            for k in ("many", "medium", "few")] == [36, 35, 29]
    assert paper_config("cifar10_lt").eval.index_ranges == (3, 4)
    assert paper_config("fashion_mnist_lt").eval.index_ranges is None  # no published figures: thresholds
