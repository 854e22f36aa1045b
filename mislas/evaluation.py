"""Evaluation of trained heads: logits of a split, their metrics, temperature scaling.

One path for every stage: :func:`evaluate_heads` (each epoch's validation) and
:func:`final_evaluation` (val and test, and both again after temperature scaling fitted on
val) run one backbone pass per batch for all heads of a Stage-2 group; a single model is a
group of one (:func:`evaluate_split`, :func:`finish`). Both are streamed on the model's
device (:mod:`mislas.streaming`: no N×K logits on the host, issue 16).
:func:`evaluate_heads_host` and :func:`final_evaluation_host` are the plain path they replaced
(every head's logits on the host, then :func:`mislas.metrics.evaluate_logits`): kept as the
independent computation the streamed one is tested against (equal to float rounding: the NLL
is a float64 mean of per-sample terms where the host path averages float32 cross-entropies,
relative 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mislas import device as dev
from mislas.calibration import temperature_scaled_results
from mislas.config import RunConfig
from mislas.data.batches import Batches, eval_batches
from mislas.data.types import LTData
from mislas.metrics import EvalResult, classifier_weight_norms, evaluate_logits
from mislas.models import Network, effective_weight
from mislas.records import EpochRecord, FinalEvaluation, StageResult
from mislas.streaming import evaluate_heads_streaming, final_evaluation_streaming

__all__ = ["Features", "FinalEvaluation", "eval_batches", "evaluate_heads", "evaluate_heads_host", "evaluate_split",
           "final_evaluation", "final_evaluation_host",
           "finish", "predict", "predict_heads"]


@torch.no_grad()
def predict(
    model: nn.Module, batches: Batches, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (logits, or what ``model`` returns) and labels of a whole split, on the CPU, float32."""
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        with dev.autocast(device):
            logits.append(model(dev.to_device(x, device, channels_last)).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def predict_heads(backbone: Network, heads: Sequence[nn.Module], batches: Batches, device: torch.device,
                  channels_last: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every head's logits on a split from one backbone pass per batch (CPU, float32), and the labels."""
    backbone.eval()
    for h in heads:
        h.eval()
    per_batch, labels = [], []
    for x, y in batches:
        with dev.autocast(device):
            feats = backbone.features(dev.to_device(x, device, channels_last))
            per_batch.append(torch.stack([h(feats).float() for h in heads]).cpu())  # [G, B, K]
        labels.append(y.cpu())
    if not per_batch:
        return [torch.zeros(0, 0) for _ in heads], torch.zeros(0, dtype=torch.int64)
    return list(torch.cat(per_batch, 1).unbind(0)), torch.cat(labels)


def evaluate_heads(backbone: Network, heads: Sequence[nn.Module], data: LTData, split: str,
                   cfgs: Sequence[RunConfig], device: torch.device) -> list[EvalResult]:
    """The one evaluation path: each head (with its config's eval settings) on ``split``, one backbone pass."""
    return evaluate_heads_streaming(backbone, heads, data, split, cfgs, device)


def final_evaluation(backbone: Network, heads: Sequence[nn.Module], data: LTData, cfgs: Sequence[RunConfig],
                     device: torch.device) -> list[FinalEvaluation]:
    """The one final evaluation: val and test of every head, and both after temperature scaling fitted on val."""
    return final_evaluation_streaming(backbone, heads, data, cfgs, device)


def evaluate_heads_host(backbone: Network, heads: Sequence[nn.Module], data: LTData, split: str,
                        cfgs: Sequence[RunConfig], device: torch.device) -> list[EvalResult]:
    """:func:`evaluate_heads` by the host path: every head's logits on the host, then their metrics."""
    ref = cfgs[0]
    logits, labels = predict_heads(backbone, heads, eval_batches(data, split, ref, device), device,
                                   ref.channels_last)
    out = []
    for cfg, lg in zip(cfgs, logits):
        e = cfg.eval
        out.append(evaluate_logits(lg, labels, data.class_counts, n_bins=e.n_bins, split_rule=e.split_rule))
    return out


def final_evaluation_host(backbone: Network, heads: Sequence[nn.Module], data: LTData, cfgs: Sequence[RunConfig],
                          device: torch.device) -> list[FinalEvaluation]:
    """Compute the final evaluation of every head by the host path.

    :func:`final_evaluation` by the host path: val and test logits of every head on the host, their
    metrics, and temperature scaling fitted on val (:mod:`mislas.calibration`).
    """
    ref = cfgs[0]
    val_logits, val_labels = predict_heads(backbone, heads, eval_batches(data, "val", ref, device), device,
                                           ref.channels_last)
    test_logits, test_labels = predict_heads(backbone, heads, eval_batches(data, "test", ref, device), device,
                                             ref.channels_last)
    out = []
    for cfg, lv, lt in zip(cfgs, val_logits, test_logits):
        e = cfg.eval
        kwargs: dict[str, Any] = {"n_bins": e.n_bins, "split_rule": e.split_rule}
        val = evaluate_logits(lv, val_labels, data.class_counts, **kwargs)
        test = evaluate_logits(lt, test_labels, data.class_counts, **kwargs)
        t, val_ts, test_ts = temperature_scaled_results(lv, val_labels, lt, test_labels, data.class_counts, **kwargs)
        out.append(FinalEvaluation(val, test, t, val_ts, test_ts))
    return out


def evaluate_split(model: Network, data: LTData, split: str, cfg: RunConfig, device: torch.device) -> EvalResult:
    """Top-1 (All/Many/Medium/Few), ECE, MCE, NLL and reliability bins on ``split``."""
    return evaluate_heads(model, [model.classifier], data, split, [cfg], device)[0]


def finish(model: Network, data: LTData, cfg: RunConfig, device: torch.device, records: list[EpochRecord],
           extras: dict[str, Any] | None = None) -> StageResult:
    """A single model's result: its final evaluation (:func:`final_evaluation`) and classifier weight norms."""
    final = final_evaluation(model, [model.classifier], data, [cfg], device)[0]
    norms = classifier_weight_norms(effective_weight(model.classifier).detach().float().cpu())
    return StageResult(model, final.val, final.test, records, norms, extras or {}, final.temperature, final.val_ts,
                       final.test_ts)


class Features(nn.Module):
    """Adapter so :func:`predict` returns features instead of logits."""

    def __init__(self, model: Network) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the backbone's features of ``x``."""
        return self.model.features(x)
