"""Run configuration: frozen dataclasses built once at the edge, and the paper's presets.

The ``paper`` preset is Table 6 of the seed for a data set and imbalance factor; ``smoke``
is a small budget that finishes on a laptop CPU. ``--set section.key=value`` overrides any
field; unknown keys and badly typed values raise :class:`UsageError` naming the key.

Every value is checked when its dataclass is built (``__post_init__``), so a bad config
fails at the edge, with one line that names the key, states the rule and shows the value
("stage2.eps_1 must be a finite number in [0, 1), got nan"), before any data is loaded.

One module per concept, every name importable from ``mislas.config`` as before:
:mod:`~mislas.config.checks` (value checks), :mod:`~mislas.config.sections` (the dataclasses,
method defaults), :mod:`~mislas.config.presets` (Table 6) and :mod:`~mislas.config.overrides`
(``--set``, :func:`from_dict`). Methods, forms and LAS targets come from :mod:`mislas.spec`.
"""

from __future__ import annotations

from mislas.config.overrides import apply_overrides, from_dict
from mislas.config.presets import (
    DEFAULT_IMB_FACTOR,
    PAPER_LAS_TARGET,
    REFERENCE_CONFIG_STAGE2,
    REFERENCE_INDEX_RANGES,
    paper_config,
    preset_config,
    reference_config,
    smoke_config,
)
from mislas.config.sections import (
    ARCHS,
    DEFAULT_SHIFT_BN,
    DEFAULT_STAGE2_SCHEDULE,
    EPOCH_LENGTH_RULES,
    LOADERS,
    PRESETS,
    SCHEDULES,
    STAGE2_SCHEDULES,
    Arch,
    DataConfig,
    EpochLength,
    EpochLengthRule,
    EvalConfig,
    Loader,
    Preset,
    RunConfig,
    Schedule,
    Stage1Config,
    Stage2Config,
    Stage2Schedule,
    check_epoch_length,
    effective_shift_bn,
    effective_stage2_schedule,
    with_method,
)
from mislas.spec import FORMS, METHODS, TARGETS, TRAINED_METHODS, Form, LasTarget, Method, SplitRule

__all__ = [
    "ARCHS", "DEFAULT_IMB_FACTOR", "DEFAULT_SHIFT_BN", "DEFAULT_STAGE2_SCHEDULE", "EPOCH_LENGTH_RULES", "FORMS",
    "LOADERS", "METHODS", "PAPER_LAS_TARGET", "PRESETS", "REFERENCE_CONFIG_STAGE2", "REFERENCE_INDEX_RANGES",
    "SCHEDULES", "STAGE2_SCHEDULES", "TARGETS", "TRAINED_METHODS", "Arch", "DataConfig", "EpochLength",
    "EpochLengthRule", "EvalConfig", "Form", "LasTarget", "Loader", "Method", "Preset", "RunConfig", "Schedule",
    "SplitRule", "Stage1Config", "Stage2Config", "Stage2Schedule", "apply_overrides", "check_epoch_length",
    "effective_shift_bn", "effective_stage2_schedule", "from_dict", "paper_config", "preset_config",
    "reference_config", "smoke_config", "with_method",
]
