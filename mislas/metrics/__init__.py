"""Evaluation metrics: top-1 (all / Many / Medium / Few), ECE, MCE, reliability bins, NLL and more.

Also classwise / adaptive / per-split ECE, the Brier score and per-split confidence quantiles.
Pure functions: torch tensors or numpy arrays in, Python floats / numpy arrays out. Nothing
here keeps state, so the same numbers come out of training, studies and reports.

One module per concept: :mod:`~mislas.metrics.inputs` (checks), :mod:`~mislas.metrics.binned`
(ECE, MCE, reliability, classwise and adaptive ECE), :mod:`~mislas.metrics.scores` (NLL,
Brier), :mod:`~mislas.metrics.by_split` (Many / Medium / Few under a
:class:`mislas.spec.SplitRule`) and :mod:`~mislas.metrics.result` (:func:`evaluate_logits`).
The names are importable from ``mislas.metrics`` as before.

Units: the low-level functions return fractions in [0, 1]; :func:`evaluate_logits` reports
accuracies, MCE and every ECE variant in percent, as the paper prints ECE, NLL in nats and
the Brier score raw (in [0, 2]).
"""

from __future__ import annotations

from mislas.metrics.binned import adaptive_ece, classwise_ece, ece_mce, reliability_bins
from mislas.metrics.by_split import confidence_by_split, per_class_accuracy, split_accuracy, split_ece
from mislas.metrics.inputs import ArrayLike
from mislas.metrics.result import EvalResult, SampleOutcomes, classifier_weight_norms, evaluate_logits
from mislas.metrics.scores import brier_score, nll
from mislas.spec import CONFIDENCE_QUANTILES, DEFAULT_SPLIT_RULE, SplitRule

__all__ = [
    "CONFIDENCE_QUANTILES",
    "DEFAULT_SPLIT_RULE",
    "ArrayLike",
    "EvalResult",
    "SampleOutcomes",
    "SplitRule",
    "adaptive_ece",
    "brier_score",
    "classifier_weight_norms",
    "classwise_ece",
    "confidence_by_split",
    "ece_mce",
    "evaluate_logits",
    "nll",
    "per_class_accuracy",
    "reliability_bins",
    "split_accuracy",
    "split_ece",
]
