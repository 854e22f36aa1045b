"""The evaluation settings a group's runs recorded, for captions and the paired bootstrap.

Why: ``eval.n_bins`` and the Many / Medium / Few rule (``eval.many_above``, ``eval.few_below``,
``eval.index_ranges``) are settable, so a caption that says "15 bins" or "> 100 training
images" must read them from what the runs recorded (trials.parquet's ``config_json``, the run's
whole config) instead of restating the defaults. Where no run recorded its config (a study
older than the column), the bin count falls back to the runs' reliability bins and the split
rule is said to be unrecorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from mislas.spec import SplitRule


@dataclass(frozen=True)
class RecordedEval:
    """The distinct ``eval`` settings of a group's runs (sorted; empty when none recorded them)."""

    n_bins: tuple[int, ...] = ()
    split_rules: tuple[SplitRule, ...] = ()

    def bins_text(self, kind: str = "") -> str:
        """E.g. ``15 bins``; ``10 / 15 bins (the runs differ)``; ``bins`` when unknown; ``kind`` goes before "bins".

        >>> RecordedEval((15,)).bins_text(), RecordedEval((10, 15)).bins_text("equal-width ")
        ('15 bins', '10 / 15 equal-width bins (the runs differ)')
        """
        if not self.n_bins:
            return f"{kind}bins"
        text = " / ".join(str(n) for n in self.n_bins)
        return f"{text} {kind}bins" + (" (the runs differ)" if len(self.n_bins) > 1 else "")

    def splits_text(self) -> str:
        """The Many / Medium / Few rule in words, e.g. ``> 100, 20–100, < 20 training images``."""
        if not self.split_rules:
            return "split rule not recorded"
        text = "; ".join(rule.describe() for rule in self.split_rules)
        return text + (" (the runs differ)" if len(self.split_rules) > 1 else "")

    def bootstrap_bins(self, default: int) -> int:
        """The bin count of the paired bootstrap's ECE: the runs' own when they agree, else ``default``."""
        return self.n_bins[0] if len(self.n_bins) == 1 else default


def _eval_section(config_json: object) -> dict[str, object] | None:
    if not isinstance(config_json, str) or not config_json:
        return None
    try:
        section = json.loads(config_json).get("eval")
    except (ValueError, AttributeError):
        return None
    return section if isinstance(section, dict) else None


def _int(section: dict[str, object], name: str, default: int) -> int | None:
    value = section.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _rule(section: dict[str, object]) -> SplitRule | None:
    """The section's split rule; None where the recorded values do not make one."""
    many, few, ranges = _int(section, "many_above", 100), _int(section, "few_below", 20), section.get("index_ranges")
    if many is None or few is None:
        return None
    if ranges is not None:
        if not (isinstance(ranges, (list, tuple)) and len(ranges) == 2 and all(isinstance(v, int) for v in ranges)):
            return None
        ranges = (int(ranges[0]), int(ranges[1]))
    try:
        return SplitRule(many, few, ranges)
    except ValueError:
        return None


def _rule_order(rule: SplitRule) -> tuple[bool, tuple[int, int], int, int]:
    return rule.index_ranges is not None, rule.index_ranges or (0, 0), rule.many_above, rule.few_below


def recorded_eval(trials: pd.DataFrame, reliability: pd.DataFrame, trial_ids: Iterable[str]) -> RecordedEval:
    """The eval settings recorded by the trials ``trial_ids`` (config_json; else reliability bins)."""
    ids = set(trial_ids)
    rows = trials[trials["trial_id"].isin(ids)]
    sections = [s for s in (_eval_section(v) for v in rows.get("config_json", pd.Series(dtype=object))) if s]
    bins = {n for n in (_int(s, "n_bins", 0) for s in sections) if n}
    rules = {r for r in (_rule(s) for s in sections) if r is not None}
    if not bins and not reliability.empty:
        mine = reliability[reliability["trial_id"].isin(ids)]
        bins = {int(n) for n in mine.groupby(["trial_id", "eval_split"])["bin"].nunique()}
    return RecordedEval(tuple(sorted(bins)), tuple(sorted(rules, key=_rule_order)))
