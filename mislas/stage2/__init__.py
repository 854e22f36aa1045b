"""Stage 2: the backbone frozen, the classifier retrained with class-balanced sampling.

MiSLAS (LAS, shift BN, per-class scale, ΔW learning-rate ratio) or a baseline (cRT, LWS,
τ-norm; CE is Stage 1 alone). Modules: ``groups`` (which configs share a backbone pass,
:data:`SHARED_FIELDS`, :func:`check_group`, :func:`subgroups`), ``members`` (one member's
head, loss, optimizer, schedule and state), ``engine`` (:func:`train_stage2_group`, the one
engine; :func:`train_subgroups` for members that cannot share a pass), ``methods``
(:func:`train_stage2`: one config, a group of one for the trained methods; τ-norm).
"""

from __future__ import annotations

from mislas.stage2.engine import epoch_step, train_stage2_group, train_subgroups
from mislas.stage2.groups import GROUPABLE_METHODS, SHARED_FIELDS, check_group, subgroups
from mislas.stage2.members import Stage2Member, load_member_state, member_state, new_member
from mislas.stage2.methods import tau_norm, train_stage2

__all__ = [
    "GROUPABLE_METHODS",
    "SHARED_FIELDS",
    "Stage2Member",
    "check_group",
    "epoch_step",
    "load_member_state",
    "member_state",
    "new_member",
    "subgroups",
    "tau_norm",
    "train_stage2",
    "train_stage2_group",
    "train_subgroups",
]
