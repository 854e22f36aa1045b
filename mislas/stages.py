"""The stages' typed API in one import: every name of the modules that now hold them, re-exported.

``from mislas.stages import X`` keeps working for every name it offered before the split;
new code imports from the module that owns the job:

============================  =================================================================
:mod:`mislas.device`          ``resolve_device``, ``to_device``, ``sum_dtype``, ``autocast``
:mod:`mislas.seeding`         ``epoch_seed``, ``class_aware_seed``
:mod:`mislas.schedules`       ``stage1_lr_factor``, ``cosine_factor``
:mod:`mislas.mixup`           ``Mixup``
:mod:`mislas.records`         ``EpochRecord``, ``StageResult``, ``OnEpoch``, ``OnGroupEpoch``
:mod:`mislas.loop`            ``Targets``, ``EpochStats``, ``Step``, ``epoch_loop``, ``run_epoch``,
                              ``check_finite``
:mod:`mislas.data.batches`    ``Batches``, ``train_batches``, ``eval_batches``
:mod:`mislas.evaluation`      ``predict``, ``predict_heads``, ``evaluate_heads``,
                              ``final_evaluation`` (streamed), ``evaluate_heads_host``,
                              ``final_evaluation_host``, ``FinalEvaluation``, ``evaluate_split``, ``finish``
:mod:`mislas.stage1`          ``new_model``, ``load_stage1``, ``train_stage1``, ``fit_stage1``,
                              ``evaluate_stage1``
:mod:`mislas.stage2`          ``SHARED_FIELDS``, ``check_group``, ``subgroups``, ``Stage2Member``,
                              ``train_stage2_group``, ``train_subgroups``, ``train_stage2``
:mod:`mislas.checkpoint`      the files: ``stage1.partial.pt``, ``stage1.pt``, ``stage2.pt``,
                              ``checkpoint_config``
============================  =================================================================

Stage 1 trains the whole network with cross-entropy on mixup pairs and instance-balanced
sampling. Stage 2 freezes the backbone and retrains the classifier with class-balanced
sampling: MiSLAS (LAS, shift BN, per-class scale, ΔW learning-rate ratio) or a baseline
(cRT, LWS, τ-norm; CE is Stage 1 alone). Every random component owns a generator seeded
from (seed, stage, epoch), so an interrupted run resumed at its last finished epoch draws
the same data order as an uninterrupted one.

The precision switch is :func:`mislas.device.autocast`, looked up at call time: swap it there
(not here) to change the precision of every stage.
"""

from __future__ import annotations

from mislas.checkpoint import checkpoint_config
from mislas.data.batches import Batches, eval_batches, train_batches
from mislas.device import autocast, resolve_device, sum_dtype, to_device
from mislas.evaluation import (
    FinalEvaluation,
    evaluate_heads,
    evaluate_heads_host,
    evaluate_split,
    final_evaluation,
    final_evaluation_host,
    finish,
    predict,
    predict_heads,
)
from mislas.loop import EpochStats, Step, Targets, check_finite, epoch_loop, run_epoch
from mislas.mixup import Mixup
from mislas.records import EpochRecord, OnEpoch, OnGroupEpoch, StageResult
from mislas.schedules import cosine_factor, stage1_lr_factor
from mislas.seeding import class_aware_seed, epoch_seed
from mislas.stage1 import evaluate_stage1, fit_stage1, load_stage1, new_model, train_stage1
from mislas.stage2 import (
    GROUPABLE_METHODS,
    SHARED_FIELDS,
    Stage2Member,
    check_group,
    epoch_step,
    new_member,
    subgroups,
    train_stage2,
    train_stage2_group,
    train_subgroups,
)

# The private names benchmarks and docs used before the split, under their old spelling.
_autocast = autocast
_epoch_step = epoch_step
_new_member = new_member

__all__ = [
    "GROUPABLE_METHODS",
    "SHARED_FIELDS",
    "Batches",
    "EpochRecord",
    "EpochStats",
    "FinalEvaluation",
    "Mixup",
    "OnEpoch",
    "OnGroupEpoch",
    "Stage2Member",
    "StageResult",
    "Step",
    "Targets",
    "autocast",
    "check_finite",
    "check_group",
    "checkpoint_config",
    "class_aware_seed",
    "cosine_factor",
    "epoch_loop",
    "epoch_seed",
    "epoch_step",
    "eval_batches",
    "evaluate_heads",
    "evaluate_heads_host",
    "evaluate_split",
    "evaluate_stage1",
    "final_evaluation",
    "final_evaluation_host",
    "finish",
    "fit_stage1",
    "load_stage1",
    "new_member",
    "new_model",
    "predict",
    "predict_heads",
    "resolve_device",
    "run_epoch",
    "stage1_lr_factor",
    "subgroups",
    "sum_dtype",
    "to_device",
    "train_batches",
    "train_stage1",
    "train_stage2",
    "train_stage2_group",
    "train_subgroups",
]
