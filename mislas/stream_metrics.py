"""The accumulator of streaming evaluation: every metric a row needs, summed batch by batch.

:class:`StreamingMetrics` takes each batch's [G, B, K] logits of G heads on the device and keeps
only what the metrics need (per member, class and bin the classwise sums; the Brier sum; per
member and sample the top-1 confidence, prediction and float64 NLL); :meth:`StreamingMetrics.results`
turns them into the :class:`mislas.metrics.EvalResult` the host path builds, with
:mod:`mislas.metrics`' own functions. How, and how closely it agrees: :mod:`mislas.streaming`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mislas.config import EvalConfig
from mislas.metrics import EvalResult
from mislas.metrics.binned import _bin_upper
from mislas.metrics.inputs import _check_n_bins
from mislas.metrics.result import result_from_outcomes

# Cells (member × row × class) per chunk of the float64 work: the temporaries stay near
# 21 bytes × this (float32 softmax, the float64 cast and softmax, a mask), 22 MB on the CPU and
# 0.7 GB on a GPU, whatever G, B and K are.
CHUNK_CELLS_CPU = 1 << 20
CHUNK_CELLS_GPU = 1 << 25

def metrics_device(device: torch.device) -> torch.device:
    """Where the metrics of a model on ``device`` accumulate.

    There, except on MPS (no float64), where they go to the CPU one batch at a time.
    """
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def chunk_cells(device: torch.device) -> int:
    """The default :data:`CHUNK_CELLS_CPU` / :data:`CHUNK_CELLS_GPU` for ``device``."""
    return CHUNK_CELLS_CPU if device.type == "cpu" else CHUNK_CELLS_GPU


def _chunks(g: int, b: int, k: int, cells: int) -> Iterator[tuple[slice, slice]]:
    """(members, rows) slices of at most ``cells`` cells of a [g, b, k] batch (whole members when one fits)."""
    per_member = b * k
    if per_member <= cells:
        step = max(1, cells // max(per_member, 1))
        for g0 in range(0, g, step):
            yield slice(g0, min(g0 + step, g)), slice(0, b)
        return
    rows = max(1, cells // max(k, 1))
    for g0 in range(g):
        for r0 in range(0, b, rows):
            yield slice(g0, g0 + 1), slice(r0, min(r0 + rows, b))


def _check_labels(labels: torch.Tensor, b: int, k: int) -> None:
    if labels.ndim != 1 or labels.shape[0] != b:
        raise ValueError(f"labels must have shape [B] with B = {b} (the logits' batch), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if b:
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= k:
            raise ValueError(f"labels must lie in [0, {k - 1}] for K = {k} classes, got range [{lo}, {hi}]")


class StreamingMetrics:
    """Per-batch accumulation of every :class:`EvalResult` field for G members on one device.

    ``evals[g]`` is member g's eval settings (bins, Many/Medium/Few); ``train_counts`` the
    training images per class. :meth:`update` takes a batch's [G, B, K] logits (from a list of
    heads, or :class:`mislas.stacked.StackedHeads`) and labels on the device; :meth:`results`
    gives one :class:`EvalResult` per member, equal to :func:`mislas.metrics.evaluate_logits`
    on that member's concatenated logits (see the module docstring for the agreement).
    """

    def __init__(self, evals: Sequence[EvalConfig], num_classes: int, train_counts: Sequence[int] | np.ndarray,
                 device: torch.device, *, cells: int | None = None) -> None:
        if not evals:
            raise ValueError("StreamingMetrics needs the eval settings of at least one member, got none")
        counts = np.asarray(train_counts)
        if counts.ndim != 1 or counts.shape[0] != num_classes:
            raise ValueError(f"train_counts must have one entry per class (K = {num_classes}), "
                             f"got shape {counts.shape}")
        self.evals = list(evals)
        self.k = int(num_classes)
        self.counts = counts
        self.device = metrics_device(device)
        self.cells = cells if cells is not None else chunk_cells(self.device)
        g = len(self.evals)
        self.n_bins = [_check_n_bins(e.n_bins) for e in self.evals]
        # member g's classwise sums live at [start[g], start[g] + K·n_bins[g]) of one flat buffer
        starts = np.concatenate(([0], np.cumsum([self.k * n for n in self.n_bins])))
        self._start = torch.as_tensor(starts[:-1], dtype=torch.int64, device=self.device)
        self._span = [(int(starts[i]), int(starts[i + 1])) for i in range(g)]
        self._hits = torch.zeros(int(starts[-1]), dtype=torch.float64, device=self.device)
        self._psum = torch.zeros_like(self._hits)
        self._edges = {n: torch.as_tensor(_bin_upper(n), device=self.device) for n in set(self.n_bins)}
        self._class_base = {n: torch.arange(self.k, device=self.device) * n for n in set(self.n_bins)}
        self._brier = torch.zeros(g, dtype=torch.float64, device=self.device)
        self._conf: list[torch.Tensor] = []
        self._pred: list[torch.Tensor] = []
        self._nll: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @property
    def num_samples(self) -> int:
        """Number of samples added so far."""
        return sum(int(y.shape[0]) for y in self._labels)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``logits`` [G, B, K] (float; half precision is promoted to float32) and ``labels`` [B]."""
        g = len(self.evals)
        if logits.ndim != 3 or logits.shape[0] != g or logits.shape[2] != self.k:
            raise ValueError(f"logits must have shape [G, B, K] with G = {g}, K = {self.k}, got {tuple(logits.shape)}")
        if not logits.dtype.is_floating_point:
            raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
        b = int(logits.shape[1])
        logits, labels = logits.to(self.device), labels.to(self.device)
        _check_labels(labels, b, self.k)
        labels = labels.long()
        work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        conf = torch.empty((g, b), dtype=work.dtype, device=self.device)
        pred = torch.empty((g, b), dtype=torch.int64, device=self.device)
        nll = torch.empty((g, b), dtype=torch.float64, device=self.device)
        for members, rows in _chunks(g, b, self.k, self.cells):
            part = work[members, rows]
            y = labels[rows]
            c, pr = F.softmax(part, dim=2).max(dim=2)  # evaluate_logits' confidence and prediction
            conf[members, rows], pred[members, rows] = c, pr
            p = F.softmax(part, dim=2, dtype=torch.float64)
            gy = y.view(1, -1, 1).expand(part.shape[0], -1, 1)
            py = p.gather(2, gy).squeeze(2)
            # −log p_y = (z_j − z_y) − log p_j for any class j; j = the prediction keeps p_j
            # near the top (no underflow where p_y underflows, as log_softmax)
            gj = pr.unsqueeze(2)
            shift = part.gather(2, gj).squeeze(2).double() - part.gather(2, gy).squeeze(2).double()
            nll[members, rows] = shift - p.gather(2, gj).squeeze(2).log()
            flat = p.view(p.shape[0], 1, -1)
            sq = torch.bmm(flat, flat.transpose(1, 2)).view(-1)  # Σ p², without a temporary of p's size
            self._brier[members] += sq + ((py - 1.0).square() - py.square()).sum(dim=1)
            self._classwise(members, p, py, y)
        self._conf.append(conf)
        self._pred.append(pred)
        self._nll.append(nll)
        self._labels.append(labels)

    def _classwise(self, members: slice, p: torch.Tensor, py: torch.Tensor, y: torch.Tensor) -> None:
        """:func:`mislas.metrics._classwise_sums` of a chunk, into each member's flat sums."""
        idx = list(range(len(self.evals)))[members]
        for n in sorted({self.n_bins[i] for i in idx}):
            local = [j for j, i in enumerate(idx) if self.n_bins[i] == n]
            pick = torch.tensor(local, device=self.device)
            pp = p if len(local) == len(idx) else p.index_select(0, pick)
            yy = py if len(local) == len(idx) else py.index_select(0, pick)
            start = self._start[members].index_select(0, pick)
            edges = self._edges[n]
            # Bin 0 of each (member, class) takes the column sum; the few p above the first edge
            # (fewer than n per row, as a row sums to 1) then move to their own bins.
            first = start.view(-1, 1) + self._class_base[n].view(1, -1)  # flat cell of bin 0, [members, K]
            self._psum.index_add_(0, first.view(-1), pp.sum(dim=1).view(-1))
            member, row, cls = (pp > edges[0]).nonzero(as_tuple=True)
            vals = pp[member, row, cls]
            cell = first[member, cls]
            self._psum.index_add_(0, cell + torch.bucketize(vals, edges).clamp_max_(n - 1), vals)
            self._psum.index_add_(0, cell, vals.neg())
            hit = torch.bucketize(yy, edges).clamp_max_(n - 1) + y.view(1, -1) * n + start.view(-1, 1)
            self._hits.index_add_(0, hit.view(-1), torch.ones_like(yy).view(-1))

    def results(self) -> list[EvalResult]:
        """One :class:`EvalResult` per member, as :func:`mislas.metrics.evaluate_logits` builds it."""
        n = self.num_samples
        if n == 0:
            raise ValueError("logits must hold at least one sample, got 0")
        labels = torch.cat(self._labels).cpu().numpy()
        conf = torch.cat(self._conf, 1).double().cpu().numpy()
        pred = torch.cat(self._pred, 1).cpu().numpy()
        nll = torch.cat(self._nll, 1).cpu().numpy()
        brier = self._brier.cpu().numpy()
        gap = (self._hits - self._psum).abs().cpu().numpy()
        out = []
        for g, e in enumerate(self.evals):
            lo, hi = self._span[g]
            out.append(_result(e, labels, conf[g], pred[g], nll[g], self.counts, self.k,
                               classwise=float(gap[lo:hi].sum() / (n * self.k)), brier_sum=float(brier[g])))
        return out


def _result(e: EvalConfig, labels: np.ndarray, conf: np.ndarray, preds: np.ndarray, nll: np.ndarray,
            counts: np.ndarray, k: int, *, classwise: float, brier_sum: float) -> EvalResult:
    """Every field from the N-vectors and the sums, assembled as :func:`mislas.metrics.evaluate_logits` does."""
    return result_from_outcomes(labels, conf, preds, counts, k, n_bins=e.n_bins, split_rule=e.split_rule,
                                nll_mean=float(nll.mean()), sample_nll=nll, classwise=classwise,
                                brier=brier_sum / int(labels.shape[0]))
