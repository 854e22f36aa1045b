"""Streaming evaluation (issue 16): all heads of a group, batch by batch, on the model's device.

Every member is evaluated at once where the model is, with no N×K logits on the host.

Why: the host path (:func:`mislas.evaluation.evaluate_heads`) moves every batch's logits to the
host and concatenates them (N×K float32 per member, 0.8 GB at iNaturalist's 24,426 × 8,142,
twice while ``torch.cat`` runs), then walks them in numpy several times per member. Here each
batch's [G, B, K] logits stay on the device and are reduced at once to what the metrics need:

- per (member, class, bin): the summed 1[y = k] and summed p_k of classwise ECE
  (:func:`mislas.metrics._classwise_sums`), binned by the same right-closed bins on the same
  float64 edges (``torch.bucketize`` with ``right=False`` is ``np.searchsorted(side="left")``;
  nothing is sorted). Only the probabilities above the first edge need binning, fewer than
  ``n_bins`` per row since a row sums to 1 (e.g. at most 14 of iNaturalist's 8,142), so bin 0
  takes each class's column sum and those few (``nonzero``) move to their bins by
  ``index_add_``;
- per member: the Brier sum, Σ p² + Σ_i ((p_y − 1)² − p_y²) (:func:`mislas.metrics._brier_sum`
  expanded);
- per (member, sample): the top-1 confidence and prediction (float32 softmax, as
  :func:`mislas.metrics.evaluate_logits` takes them) and the float64 NLL of the label, from
  the float64 softmax: −log p_y = (z_j − z_y) − log p_j with j the prediction, which stays
  finite where p_y underflows (as ``log_softmax`` does).

The accumulator is :class:`mislas.stream_metrics.StreamingMetrics` (re-exported here).
These N-vectors are what :class:`mislas.metrics.SampleOutcomes` keeps anyway (N·25 bytes per
member, 0.6 MB at iNaturalist, against 0.8–1.6 GB of logits), so ECE, MCE, reliability bins,
adaptive and per-split ECE, per-class accuracy, Many/Medium/Few and the confidence quantiles
are computed from them by :mod:`mislas.metrics`' own functions: the same numbers, quantiles
exact (``np.quantile`` over the split's N confidences, no histogram and no tolerance).

Agreement with the host path: confidence, prediction, top-1 and everything binned on the
confidence equal it bit for bit (same float32 softmax per row); classwise ECE, Brier and the
per-sample NLL are float64 sums in another order (relative 1e-12); ``nll`` is the mean of the
float64 per-sample NLL where the host path averages float32 cross-entropies (relative 1e-6).

Temperature scaling (:func:`stream_final_evaluation`): the val pass also keeps each batch's
[G, B, K] logits on the device (the tensors the heads produced: no copy, no concatenation;
optionally as bfloat16, see :data:`BF16_TEMPERATURE_RTOL`) up to :data:`HOLD_BYTES`, past
which it keeps the val features and recomputes a chunk of members' logits at a time; T is
fitted per member by :mod:`mislas.calibration`'s Newton with each pass over the held logits
on the device, val_ts is streamed from them, and the test pass streams the plain and the /T
metrics from one backbone pass (test logits are never held).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mislas import device as dev
from mislas.calibration import TemperatureFit, _newton_beta
from mislas.config import EvalConfig, RunConfig
from mislas.data import LTData
from mislas.data.batches import eval_batches
from mislas.metrics import EvalResult
from mislas.models import Network
from mislas.records import FinalEvaluation
from mislas.stream_metrics import StreamingMetrics, chunk_cells, metrics_device

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

HOLD_BYTES = 16 << 30
"""Default budget for the val logits the final evaluation holds for the temperature fit (16 GiB:
iNaturalist's 24,426 × 8,142 float32 logits are 0.80 GB per member, so up to 21 members are
held whole; a larger group recomputes chunks of 21 from the held features)."""

BF16_TEMPERATURE_RTOL = 2.0**-9
"""Stated bound on |T_bf16 / T − 1| when the val logits are held as bfloat16 (``hold_dtype``),
tested in tests/mislas/test_streaming_eval.py (measured: at most 0.11 × this on trained-looking
logits, K = 10 … 1000). bfloat16 keeps 8 significant bits, so each held value is rounded by at
most 2⁻⁹ relative; the held values are z − max z (softmax and the fit are shift-invariant),
so the rounding is relative to each logit's distance from its row's top, not to a common
offset. One common factor 1 + δ on all of them moves T by exactly 1 + δ; independent
roundings partly cancel. float16 (2⁻¹¹) does better still."""


# --- logits of every head, one backbone pass per batch --------------------------------------

def _forward(backbone: Network, heads: Sequence[nn.Module], batches: Batches, device: torch.device,
             channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: the backbone's features, every head's float32 logits [G, B, K] and the labels, on ``device``."""
    backbone.eval()
    for h in heads:
        h.eval()
    for x, y in batches:
        with torch.no_grad(), _autocast(device):
            feats = backbone.features(dev.to_device(x, device, channels_last))
        yield feats, _head_logits(heads, feats, device), y.to(metrics_device(device), non_blocking=True)


def _head_logits(heads: Sequence[nn.Module], feats: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[G, B, K] float32 logits of ``heads`` on one batch of features, on :func:`metrics_device`.

    As :func:`mislas.evaluation.predict_heads` computes them (same calls, same autocast), so a
    recomputation gives the same values.
    """
    with torch.no_grad(), _autocast(device):
        return torch.stack([h(feats).float() for h in heads]).to(metrics_device(device))


def _autocast(device: torch.device) -> torch.autocast:
    """The precision switch of the host path, looked up at call time (a check may swap it)."""
    return dev.autocast(device)


def head_logits(backbone: Network, heads: Sequence[nn.Module], batches: Batches, device: torch.device,
                channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch: every head's float32 logits [G, B, K] and the labels, on ``device``.

    The same calls as :func:`mislas.evaluation.predict_heads` (bf16 autocast on CUDA), so the
    logits are the same, without the move to the host.
    """
    for _, logits, y in _forward(backbone, heads, batches, device, channels_last):
        yield logits, y


def stream_evaluate(backbone: Network, heads: Sequence[nn.Module], batches: Batches,
                    train_counts: Sequence[int] | np.ndarray, evals: Sequence[EvalConfig], *,
                    device: torch.device, channels_last: bool, cells: int | None = None) -> list[EvalResult]:
    """Every head's :class:`EvalResult` on ``batches``, one backbone pass per batch, streamed on ``device``."""
    acc: StreamingMetrics | None = None
    for logits, y in head_logits(backbone, heads, batches, device, channels_last):
        if acc is None:
            acc = StreamingMetrics(evals, int(logits.shape[2]), train_counts, device, cells=cells)
        acc.update(logits, y)
    if acc is None:
        raise ValueError("logits must hold at least one sample, got 0")
    return acc.results()


# --- temperature scaling on the held logits -------------------------------------------------

def _scaled(logits: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """Member g's logits / T_g, each as :func:`mislas.calibration.apply_temperature` divides."""
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    out = torch.empty_like(work)
    for g, t in enumerate(temperatures):
        torch.div(work[g], t, out=out[g])
    return out


@torch.no_grad()
def fit_temperatures(held: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], *,
                     cells: int | None = None) -> list[TemperatureFit]:
    """:func:`mislas.calibration.temperature_fit` of every member on logits held batch by batch.

    ``held[i]`` is batch i's [G, B, K] logits and ``labels[i]`` its labels, on one device;
    each Newton pass walks member g's rows there in float64 chunks and syncs once. Same
    method, stopping rule and bounds as the host fit (:func:`mislas.calibration._newton_beta`),
    so the same T to ~1e-12 relative (the sums run in another order). Non-finite logits raise
    ValueError as :func:`mislas.calibration.fit_temperature` does.
    """
    if not held:
        raise ValueError("val_logits must hold at least one sample, got 0")
    device = held[0].device
    step_cells = cells if cells is not None else chunk_cells(device)
    g_count, k = int(held[0].shape[0]), int(held[0].shape[2])
    n = sum(int(z.shape[1]) for z in held)
    rows = max(1, step_cells // max(k, 1))
    fits = []
    for g in range(g_count):
        bad = sum((~torch.isfinite(z[g])).sum() for z in held)
        if int(bad):
            n_nan = int(sum(torch.isnan(z[g]).sum() for z in held))
            raise ValueError(f"val_logits must be finite, got {n_nan} NaN and {int(bad) - n_nan} infinite entries")
        spread = sum(bool((z[g].amax(1) != z[g].amin(1)).any()) for z in held)
        if not spread:
            fits.append(TemperatureFit(1.0, 0))  # every row constant: softmax is uniform for every T
            continue

        def grad_curv(beta: float, g: int = g) -> tuple[float, float]:
            total = torch.zeros(2, dtype=torch.float64, device=device)
            for z32, y in zip(held, labels):
                for r0 in range(0, int(z32.shape[1]), rows):
                    z = z32[g, r0:r0 + rows].double()
                    z -= z.amax(dim=1, keepdim=True)  # as temperature_fit shifts
                    p = torch.softmax(z * beta, dim=1)
                    m1 = torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)  # E_p[z] per row, no temporary
                    total[0] += m1.sum() - z.gather(1, y[r0:r0 + rows, None].long()).sum()
                    z -= m1[:, None]  # Var_p[z] = E_p[(z − E_p z)²], as calibration._grad_curv computes it
                    total[1] += torch.dot(p.view(-1), z.square_().view(-1))
            grad, curv = total.tolist()
            return grad / n, curv / n

        beta, passes = _newton_beta(grad_curv)
        fits.append(TemperatureFit(1.0 / beta, passes))
    return fits


def _hold(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``logits`` as held for the fit.

    The tensor itself in its own dtype, else shifted by the row max and cast (the rounding then
    is relative to z_max − z, see :data:`BF16_TEMPERATURE_RTOL`).
    """
    if dtype == logits.dtype:
        return logits
    return (logits - logits.amax(dim=2, keepdim=True)).to(dtype)


def stream_final_evaluation(backbone: Network, heads: Sequence[nn.Module], val_batches: Batches,
                            test_batches: Batches, train_counts: Sequence[int] | np.ndarray,
                            evals: Sequence[EvalConfig], *, device: torch.device, channels_last: bool,
                            hold_dtype: torch.dtype = torch.float32, hold_bytes: int = HOLD_BYTES,
                            cells: int | None = None) -> list[FinalEvaluation]:
    """:func:`mislas.evaluation.final_evaluation` streamed: val, T fitted on val, val_ts, then test and test_ts.

    The fit needs the val logits; they are held on ``device`` batch by batch (as
    ``hold_dtype``: float32 keeps them exactly, bfloat16 halves them at
    :data:`BF16_TEMPERATURE_RTOL` on T). While all G members' fit in ``hold_bytes`` they are
    the tensors the heads produced (no copy); past it, only the val features are held
    (N×D, one copy for all members) and the logits of as many members as fit are recomputed
    from them, one chunk of members at a time (the same calls on the same tensors: the same
    values, one more head pass per member). Nothing of N×K reaches the host.
    """
    feats: list[torch.Tensor] = []
    held: list[torch.Tensor] | None = []
    ys: list[torch.Tensor] = []
    val: StreamingMetrics | None = None
    size = 0
    for f, logits, y in _forward(backbone, heads, val_batches, device, channels_last):
        if val is None:
            val = StreamingMetrics(evals, int(logits.shape[2]), train_counts, device, cells=cells)
        val.update(logits, y)
        feats.append(f)
        ys.append(y)
        size += logits.numel() * torch.empty((), dtype=hold_dtype).element_size()
        if held is not None and size <= hold_bytes:
            held.append(_hold(logits, hold_dtype))
        elif held is not None:
            held = None  # over the budget: the fit recomputes chunks of members from the features
    if val is None:
        raise ValueError("logits must hold at least one sample, got 0")
    val_res = val.results()
    k, g = int(val_res[0].per_class_acc.shape[0]), len(heads)
    per_member = size // g
    step = g if held is not None else max(1, hold_bytes // max(per_member, 1))
    temps: list[float] = []
    val_ts_res: list[EvalResult] = []
    for g0 in range(0, g, step):
        members = range(g0, min(g0 + step, g))
        if held is not None:
            part, feats = held, []  # every member's logits are held: the features are not needed
        else:
            part = [_hold(_head_logits([heads[i] for i in members], f, device), hold_dtype) for f in feats]
        fits = [fit.temperature for fit in fit_temperatures(part, ys, cells=cells)]
        acc = StreamingMetrics([evals[i] for i in members], k, train_counts, device, cells=cells)
        for z, y in zip(part, ys):
            acc.update(_scaled(z, fits), y)
        del part
        temps += fits
        val_ts_res += acc.results()
    held = None
    del feats
    test = StreamingMetrics(evals, k, train_counts, device, cells=cells)
    test_ts = StreamingMetrics(evals, k, train_counts, device, cells=cells)
    for logits, y in head_logits(backbone, heads, test_batches, device, channels_last):
        test.update(logits, y)
        test_ts.update(_scaled(logits, temps), y)
    test_res, test_ts_res = test.results(), test_ts.results()
    return [FinalEvaluation(v, t, temp, vt, tt)
            for v, t, temp, vt, tt in zip(val_res, test_res, temps, val_ts_res, test_ts_res)]


# --- drop-in replacements of the host path ------------------------------------------------

def evaluate_heads_streaming(backbone: Network, heads: Sequence[nn.Module], data: LTData, split: str,
                             cfgs: Sequence[RunConfig], device: torch.device) -> list[EvalResult]:
    """:func:`mislas.evaluation.evaluate_heads`, same signature and results, streamed on ``device``."""
    ref = cfgs[0]
    return stream_evaluate(backbone, heads, eval_batches(data, split, ref, device), data.class_counts,
                           [c.eval for c in cfgs], device=device, channels_last=ref.channels_last)


def final_evaluation_streaming(backbone: Network, heads: Sequence[nn.Module], data: LTData,
                               cfgs: Sequence[RunConfig], device: torch.device) -> list[FinalEvaluation]:
    """:func:`mislas.evaluation.final_evaluation`, same signature and results, streamed on ``device``."""
    ref = cfgs[0]
    return stream_final_evaluation(backbone, heads, eval_batches(data, "val", ref, device),
                                   eval_batches(data, "test", ref, device), data.class_counts,
                                   [c.eval for c in cfgs], device=device, channels_last=ref.channels_last)


def held_bytes(num_samples: int, num_classes: int, num_members: int, dtype: torch.dtype = torch.float32) -> int:
    """Device bytes the final evaluation holds for the temperature fit: G·N·K·itemsize."""
    return num_members * num_samples * num_classes * torch.empty((), dtype=dtype).element_size()


__all__ = [
    "BF16_TEMPERATURE_RTOL",
    "StreamingMetrics",
    "evaluate_heads_streaming",
    "final_evaluation_streaming",
    "fit_temperatures",
    "head_logits",
    "held_bytes",
    "metrics_device",
    "stream_evaluate",
    "stream_final_evaluation",
]

