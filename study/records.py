"""Typed records the study passes around: one Stage-2 setting, one trial's members, one trial.

Why: a setting is seven knobs with a rule between them (``p`` only with the ``exp`` form); a
trial is a data set, a seed, a method, a Stage-1 flavour and 1..G members. Spelled out as
loose dicts they were rebuilt in the searcher, the trainable, the callback and the report;
here they are built once and passed whole (Tune carries the :class:`TrialSpec` in the trial's
config under ``"spec"``). Adding a searched knob: a field of :class:`Stage2Setting` (named as
the ``mislas.config.Stage2Config`` field it sets), its loader in ``study.space`` and its
column in ``study.schema.SETTING_COLUMNS``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mislas.config import RunConfig, effective_shift_bn, with_method
from mislas.spec import member_row_ids


@dataclass(frozen=True)
class Stage2Setting:
    """One MiSLAS Stage-2 setting: the knobs the study searches."""

    eps_1: float
    eps_k: float
    form: str
    p: float | None
    dw_ratio: float
    shift_bn: bool
    las_target: str

    def __post_init__(self) -> None:
        # The one place of the rule: p belongs to the exp form only.
        object.__setattr__(self, "p", float(self.p) if self.uses_p(self.form) and self.p is not None else None)
        for name in ("eps_1", "eps_k", "dw_ratio"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "shift_bn", bool(self.shift_bn))

    @staticmethod
    def uses_p(form: str) -> bool:
        """Whether the related-function ``form`` has the exponent ``p``."""
        return form == "exp"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Return the setting's field names, in order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Stage2Setting:
        """From Optuna's params plus the space's fixed values (``p`` may be absent)."""
        values: dict[str, Any] = {n: params.get(n) for n in cls.names()}
        return cls(**values)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Stage2Setting:
        """The setting a config holds (e.g. Table 6 of a paper preset)."""
        s2 = cfg.stage2
        return cls(eps_1=s2.eps_1, eps_k=s2.eps_k, form=s2.form, p=s2.p, dw_ratio=s2.dw_ratio,
                   shift_bn=effective_shift_bn(cfg), las_target=s2.las_target)

    def apply(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with this setting's Stage-2 fields."""
        return replace(cfg, stage2=replace(cfg.stage2, **asdict(self)))

    def params(self) -> dict[str, Any]:
        """As Optuna parameters: every knob, ``p`` only for the exp form."""
        out = asdict(self)
        if not self.uses_p(self.form):
            del out["p"]
        return out

    def columns(self) -> dict[str, Any]:
        """As trials.parquet columns (``study.schema.SETTING_COLUMNS``)."""
        return asdict(self)

    def same(self, other: Stage2Setting) -> bool:
        """Equal up to float rounding (Optuna stores floats as it got them)."""
        for name in self.names():
            a, b = getattr(self, name), getattr(other, name)
            if isinstance(a, float) or isinstance(b, float):
                if a is None or b is None or not math.isclose(a, b, rel_tol=0.0, abs_tol=1e-12):
                    return False
            elif a != b:
                return False
        return True

    def describe(self) -> str:
        """Describe the setting on one line (``eps_1=..., eps_k=..., ...``)."""
        parts = [f"eps_1={self.eps_1:.3g}", f"eps_k={self.eps_k:.3g}", f"form={self.form}"]
        if self.p is not None:
            parts.append(f"p={self.p:.3g}")
        parts += [f"dw_ratio={self.dw_ratio:.3g}", f"shift_bn={self.shift_bn}", f"las_target={self.las_target}"]
        return ", ".join(parts)


@dataclass(frozen=True)
class TrialMember:
    """One row of the study: a MiSLAS setting (None for a baseline) and its Optuna trial."""

    setting: Stage2Setting | None = None
    is_paper_setting: bool = False
    optuna_trial_number: int | None = None
    variant: str | None = None  # a fixed ablation row's name (e.g. "mixup+shift_bn+las"); None otherwise


@dataclass(frozen=True)
class TrialSpec:
    """One Tune trial: 1..G members trained on one Stage 1 and one shared backbone pass.

    Members share the data set, seed, method and Stage 1; a single trial is a group of one.
    Row ids: the Tune trial id for a group of one, ``<trial id>-g<k>`` for member k otherwise.
    """

    dataset: str
    method: str
    mixup: bool
    seed: int
    members: tuple[TrialMember, ...] = (TrialMember(),)
    optuna_study: str | None = None
    shift_bn: bool | None = None  # baselines: the BN mode in Stage 2 (None: the method's default)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a trial needs at least one member")
        if (self.method == "mislas") != all(m.setting is not None for m in self.members):
            raise ValueError(f"method {self.method!r}: MiSLAS members carry a setting, baselines none")

    @property
    def grouped(self) -> bool:
        """Whether the trial has more than one member."""
        return len(self.members) > 1

    @property
    def is_paper_setting(self) -> bool:
        """Whether any member is the paper's Table 6 setting."""
        return any(m.is_paper_setting for m in self.members)

    def member_ids(self, trial_id: str) -> list[str]:
        """The trials rows (and Optuna trials) of this Tune trial (:func:`mislas.spec.member_row_ids`)."""
        return member_row_ids(trial_id, len(self.members))

    def run_config(self, base: RunConfig, k: int) -> RunConfig:
        """Member ``k``'s RunConfig: the data set's base config + method, Stage-1 flavour, seed, setting."""
        cfg = with_method(replace(base, stage1=replace(base.stage1, mixup=self.mixup), seed=self.seed), self.method)
        setting = self.members[k].setting
        if setting is not None:
            return setting.apply(cfg)
        return replace(cfg, stage2=replace(cfg.stage2, shift_bn=self.shift_bn))  # None: the method's default

    def label(self) -> str:
        """Short and stable, for trial folder names and logs."""
        mixup = "+mixup" if self.mixup and self.method != "mislas" else ""
        bn = "" if self.shift_bn is None else ("-bntrain" if self.shift_bn else "-bneval")
        ablation = "-ablation" if any(m.variant for m in self.members) else ""
        return f"{self.dataset}-{self.method}{mixup}{bn}{ablation}-s{self.seed}"

    def __str__(self) -> str:  # what Tune's progress table shows for the config
        size = f" x{len(self.members)}" if self.grouped else ""
        return f"{self.label()}{size}"
