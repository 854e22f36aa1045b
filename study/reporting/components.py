"""The component ablation (``--ablation components``): does each MiSLAS component help?

The study runs the Table 6 setting with each component on or off: Stage-1 mixup (``mixup`` /
``plain``), shift learning on BN (``shift_bn``) and label-aware smoothing (``las``; ``ce`` is
plain cross-entropy, ε_1 = ε_K = 0; ``uniform_ls`` is uniform label smoothing, ε_K = ε_1).
Each such row carries its name in ``variant`` (e.g. ``mixup+shift_bn+las``, ``plain+ce``); they
are fixed rows, never part of the search. Numbers: test split, mean ± std over seeds of complete
trials, as in the method comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from study.reporting.common import TEST_METRICS, GroupKey, best_labels, complete_trials, seed_stats
from study.schema import CONFIRM_VARIANT

LAS_STATES = ("las", "ce", "uniform_ls")  # LAS on; off (cross-entropy); replaced by uniform LS
STAGE1 = {"mixup": True, "plain": False}


@dataclass(frozen=True)
class Variant:
    """One ablation row: which components are on. None where the name does not say."""

    name: str
    mixup: bool | None
    shift_bn: bool | None
    las: str | None  # one of LAS_STATES

    @property
    def known(self) -> bool:
        """Whether the name or the rows say every component's state."""
        return self.mixup is not None and self.shift_bn is not None and self.las is not None

    @property
    def n_off(self) -> int:
        """Components off (uniform LS in place of LAS counts as LAS off)."""
        return int(self.mixup is False) + int(self.shift_bn is False) + int(self.las not in (None, "las"))

    def sort_key(self) -> tuple[int, int, bool, bool, int, str]:
        """Sort key of the ablation rows: all components on first, unknown names last.

        All on first; then one component off (mixup, shift BN, LAS, LAS → uniform LS), two, ...;
        plain+ce last; names the report cannot read after every known one, by name.
        """
        if not self.known:
            return (1, 0, False, False, 0, self.name)
        assert self.las is not None
        return (0, self.n_off, bool(self.mixup), bool(self.shift_bn), LAS_STATES.index(self.las), self.name)


def _las_of(rows: pd.DataFrame) -> str | None:
    """LAS state from the ε columns: both 0 -> ce, equal -> uniform_ls, else las."""
    eps = rows[["eps_1", "eps_k"]].astype(float).dropna()
    if eps.empty:
        return None
    e1, ek = float(eps["eps_1"].iloc[0]), float(eps["eps_k"].iloc[0])
    if math.isclose(e1, 0.0, abs_tol=1e-12) and math.isclose(ek, 0.0, abs_tol=1e-12):
        return "ce"
    return "uniform_ls" if math.isclose(e1, ek, abs_tol=1e-12) else "las"


def _flag(rows: pd.DataFrame, column: str) -> bool | None:
    values = rows[column].dropna()
    return bool(values.iloc[0]) if not values.empty else None


def parse_variant(name: str, rows: pd.DataFrame | None = None) -> Variant:
    """Parse an ablation variant's components from its name (and rows).

    The components of ``name`` (``mixup+shift_bn+las``); what the name does not say is read
    from the rows (``mixup``, ``shift_bn``, ε_1 / ε_K) when given.
    """
    tokens = name.split("+")
    mixup = next((STAGE1[t] for t in tokens if t in STAGE1), None)
    las = next((t for t in tokens if t in LAS_STATES), None)
    shift_bn: bool | None = "shift_bn" in tokens
    if set(tokens) - {*STAGE1, *LAS_STATES, "shift_bn"}:  # a name the report does not know
        shift_bn = True if "shift_bn" in tokens else None
    if rows is not None and not rows.empty:
        mixup = _flag(rows, "mixup") if mixup is None else mixup
        shift_bn = _flag(rows, "shift_bn") if shift_bn is None else shift_bn
        las = _las_of(rows) if las is None else las
    return Variant(name, mixup, shift_bn, las)


@dataclass(frozen=True)
class ComponentTable:
    """One group's component-ablation table.

    One group's ablation rows. ``stats`` is indexed by variant name (in ``variants`` order) with
    ``n_seeds``, ``n_runs`` (rows of every status) and ``<Metric>_mean`` / ``<Metric>_std``.
    """

    group: GroupKey
    variants: tuple[Variant, ...]
    stats: pd.DataFrame
    best: dict[str, tuple[str, ...]]
    trial_ids: dict[str, tuple[str, ...]]  # variant -> the complete trials averaged
    n_incomplete: int  # variant rows stopped early or failed (left out)


def component_table(group: GroupKey, trials: pd.DataFrame) -> ComponentTable | None:
    """The group's component ablation; None when the group has no variant rows."""
    rows = trials[group.mask(trials) & trials["variant"].notna() & (trials["variant"].astype(object) != CONFIRM_VARIANT)]
    if rows.empty:
        return None
    done = complete_trials(rows)
    names = rows["variant"].astype(str)
    variants = sorted((parse_variant(name, rows[names == name]) for name in names.unique()),
                      key=Variant.sort_key)
    records, ids = [], {}
    for v in variants:
        mine = done[done["variant"].astype(str) == v.name]
        records.append({"variant": v.name, "n_runs": int((names == v.name).sum()), **seed_stats(mine, TEST_METRICS)})
        ids[v.name] = tuple(mine["trial_id"].astype(str))
    stats = pd.DataFrame.from_records(records).set_index("variant")
    return ComponentTable(group, tuple(variants), stats, best_labels(stats, TEST_METRICS), ids,
                          int(len(rows) - len(done)))
