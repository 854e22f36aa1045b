"""Which Stage-2 configs can share one frozen-backbone pass, and the sub-groups of those that cannot.

A pass depends on the method, the seed, the sampler and batch settings, shift BN, mixup, the
loader and the eval batch (:data:`SHARED_FIELDS`); everything else (ε_1, ε_K, form, p, LAS
target, ΔW ratio, lr, momentum, weight decay, eval bins) is per member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mislas.config import TRAINED_METHODS, RunConfig, effective_shift_bn
from mislas.errors import UsageError

__all__ = ["GROUPABLE_METHODS", "SHARED_FIELDS", "check_group", "subgroups"]

GROUPABLE_METHODS = TRAINED_METHODS

# What makes two members' backbone passes identical: (key in errors, getter). Everything else
# (ε_1, ε_K, form, p, LAS target, ΔW ratio, lr, momentum, weight decay, eval bins) is per member.
SHARED_FIELDS: tuple[tuple[str, Callable[[RunConfig], Any]], ...] = (
    ("stage2.method", lambda c: c.stage2.method),
    ("seed", lambda c: c.seed),
    ("stage2.batch_size", lambda c: c.stage2.batch_size),
    ("stage2.samples_per_class", lambda c: c.stage2.samples_per_class),
    ("stage2.shift_bn", effective_shift_bn),
    ("stage2.epochs", lambda c: c.stage2.epochs),
    ("stage2.epoch_length", lambda c: c.stage2.epoch_length),
    ("stage2.mixup", lambda c: c.stage2.mixup),
    ("stage2.mixup_alpha", lambda c: c.stage2.mixup_alpha if c.stage2.mixup else None),
    ("channels_last", lambda c: c.channels_last),
    ("data.loader", lambda c: c.data.loader),
    ("eval.batch_size", lambda c: c.eval.batch_size),
)


def check_group(cfgs: Sequence[RunConfig]) -> None:
    """UsageError unless ``cfgs`` can share one backbone pass, naming the first field they differ in."""
    if not cfgs:
        raise UsageError("a Stage-2 group needs at least one config, got none")
    for name, get in SHARED_FIELDS:
        values = [get(c) for c in cfgs]
        if any(v != values[0] for v in values[1:]):
            shown = sorted({repr(v) for v in values})
            raise UsageError(f"all configs of a Stage-2 group must share {name}, got {', '.join(shown)}")
    method = cfgs[0].stage2.method
    if method not in GROUPABLE_METHODS:
        raise UsageError(f"stage2.method must be one of {', '.join(GROUPABLE_METHODS)} to train in a Stage-2 "
                         f"group (the others train nothing), got {method!r}")


def subgroups(cfgs: Sequence[RunConfig]) -> list[list[int]]:
    """The indices of ``cfgs`` split into sets that agree on :data:`SHARED_FIELDS`, in order of first member.

    Members that differ in a field the shared pass depends on (e.g. ``shift_bn``: the BN
    statistics differ) cannot share it, so each such set trains as its own group.
    """
    modes: dict[tuple[Any, ...], list[int]] = {}
    for i, cfg in enumerate(cfgs):
        modes.setdefault(tuple(get(cfg) for _, get in SHARED_FIELDS), []).append(i)
    return list(modes.values())
