"""Streaming evaluation (mislas.streaming) against the host path it replaces, field by field.

The host path is :func:`mislas.metrics.evaluate_logits` on a member's concatenated logits and
:func:`mislas.evaluation.evaluate_heads_host` / :func:`mislas.evaluation.final_evaluation_host` on a real
(tiny, trained) network. Tolerances: confidence, prediction and everything binned on it
exactly; float64 sums (classwise ECE, Brier, per-sample NLL) to 1e-12 relative; ``nll`` to
1e-6 relative (the host averages float32 cross-entropies); after temperature scaling, whose
T agrees to ~1e-12, to 1e-6 (a float32 logit / T may round the other way).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mislas.calibration import temperature_fit
from mislas.config import EvalConfig, RunConfig, Stage1Config
from mislas.data import LTData
from mislas.las import LabelAwareSmoothing
from mislas.metrics import EvalResult, evaluate_logits
from mislas.models import Network, ScaledClassifier, TauNormClassifier
from mislas.stacked import StackedHeads
from mislas.stages import evaluate_heads_host, final_evaluation_host, train_stage1
from mislas.streaming import (
    BF16_TEMPERATURE_RTOL,
    StreamingMetrics,
    evaluate_heads_streaming,
    final_evaluation_streaming,
    fit_temperatures,
    metrics_device,
    stream_evaluate,
    stream_final_evaluation,
)
from tests.conftest import tiny_split

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same(got: EvalResult, want: EvalResult, *, rel: float = 1e-12, nll_rel: float = 1e-6) -> None:
    """Every field of two EvalResults equal: to ``rel`` (absolute 1e-12 near 0), ``nll`` to ``nll_rel``."""
    def close(a: Any, b: Any, what: str, r: float = rel) -> None:
        if b is None:
            assert a is None, what
        else:
            assert a == pytest.approx(b, rel=r, abs=max(r, 1e-12)), what

    assert got.num_samples == want.num_samples
    for key, value in want.summary().items():
        close(got.summary()[key], value, key, nll_rel if key == "nll" else rel)
    np.testing.assert_allclose(got.per_class_acc, want.per_class_acc, rtol=rel, atol=1e-12, equal_nan=True)
    assert [b["count"] for b in got.reliability] == [b["count"] for b in want.reliability]
    for gb, wb in zip(got.reliability, want.reliability):
        for key in ("lower", "upper", "accuracy", "confidence"):
            close(gb[key], wb[key], f"reliability {key}")
    assert got.confidence_quantiles.keys() == want.confidence_quantiles.keys()
    for split, entry in want.confidence_quantiles.items():
        have = got.confidence_quantiles[split]
        if entry is None:
            assert have is None, split
            continue
        assert have is not None and have.keys() == entry.keys()
        for key, value in entry.items():
            close(have[key], value, f"quantile {split} {key}")
    gs, ws = got.samples, want.samples
    assert gs is not None and ws is not None
    np.testing.assert_array_equal(gs.label, ws.label)
    np.testing.assert_array_equal(gs.correct, ws.correct)
    np.testing.assert_allclose(gs.confidence, ws.confidence, rtol=rel, atol=1e-12)
    np.testing.assert_allclose(gs.nll, ws.nll, rtol=max(rel, 1e-12), atol=1e-12)


# --- generated logits --------------------------------------------------------------------

K = 17
COUNTS = np.arange(K) * 13 + 3  # 3..211 training images: Many, Medium and Few all present
EVALS = [EvalConfig(n_bins=15), EvalConfig(n_bins=10, many_above=50, few_below=10), EvalConfig(n_bins=15)]


def _logits(g: int, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=gen)
    y[y == 5] = 4  # class 5 has no eval sample
    z = torch.randn(g, n, k, generator=gen) * torch.tensor([1.0, 3.0, 8.0])[:g, None, None]
    z[:, torch.arange(n), y] += 2.0  # some signal, so every metric is away from its trivial value
    return z, y


@pytest.mark.parametrize(("batch", "cells"), [(1, None), (7, 40), (50, 500), (64, 10**9), (203, None)])
def test_stream_equals_evaluate_logits(batch: int, cells: int | None) -> None:
    """G = 3 members with their own bins and splits, in batches and chunks of every kind.

    Batches of 1, 7 (203 = 29·7), 50 and 64 (ragged last batches), chunks of rows (cells 40 <
    B·K) and of several members (500, 10⁹).
    """
    z, y = _logits(3, 203, K)
    acc = StreamingMetrics(EVALS, K, COUNTS, CPU, cells=cells)
    for s in range(0, 203, batch):
        acc.update(z[:, s:s + batch], y[s:s + batch])
    got = acc.results()
    for g, e in enumerate(EVALS):
        want = evaluate_logits(z[g], y, COUNTS, n_bins=e.n_bins, split_rule=e.split_rule)
        assert_same(got[g], want)
        assert math.isnan(got[g].per_class_acc[5])


def test_probabilities_on_bin_edges_bin_as_the_host_path() -> None:
    """Probabilities on bin edges bin as evaluate_logits bins them.

    Constant rows of K = 3 give p = 1/3 (the edge 5/15) in float64 and 0.33333334 in float32;
    K = 2 ties give 0.5 (an edge of 10 bins).
    """
    for k, n_bins in ((3, 15), (2, 10)):
        z = torch.zeros(2, 12, k)
        z[1, :6, 0] = 1.0
        y = torch.arange(12) % k
        counts = [5] * k
        acc = StreamingMetrics([EvalConfig(n_bins=n_bins)] * 2, k, counts, CPU)
        acc.update(z[:, :5], y[:5])
        acc.update(z[:, 5:], y[5:])
        for g, got in enumerate(acc.results()):
            assert_same(got, evaluate_logits(z[g], y, counts, n_bins=n_bins))


def test_nll_stays_finite_where_the_label_probability_underflows() -> None:
    """The NLL stays −log_softmax's finite value where p_y underflows to 0 in float64.

    Logits 1000× (T = 1e-2 on a large spread makes such).
    """
    z, y = _logits(2, 60, K, seed=3)
    z = z * 1000.0
    acc = StreamingMetrics(EVALS[:2], K, COUNTS, CPU)
    acc.update(z, y)
    for g, got in enumerate(acc.results()):
        want = evaluate_logits(z[g], y, COUNTS, n_bins=EVALS[g].n_bins, split_rule=EVALS[g].split_rule)
        assert want.samples is not None and want.samples.nll.max() > 745.0  # beyond float64's exp range
        assert_same(got, want)


def test_stacked_heads_logits_stream() -> None:
    """The [G, B, K] logits of mislas.stacked.StackedHeads feed the accumulator directly."""
    torch.manual_seed(0)
    d, k, n = 8, 6, 45
    heads, opts, losses = [], [], []
    for i in range(4):
        linear = nn.Linear(d, k)
        head = ScaledClassifier(linear, train_weight=True, train_scale=True)
        with torch.no_grad():
            head.scale.uniform_(0.5, 2.0)
        heads.append(head)
        opts.append(torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9))
        losses.append(LabelAwareSmoothing([30, 20, 10, 5, 3, 1], 0.3, 0.1 * i))
    stacked = StackedHeads(heads, opts, losses)
    x = torch.randn(n, d)
    y = torch.arange(n) % k
    with torch.no_grad():
        parts = [stacked.logits(x[s:s + 16]) for s in range(0, n, 16)]  # 16, 16, 13
    counts = [30, 20, 10, 5, 3, 1]
    acc = StreamingMetrics([EvalConfig()] * 4, k, counts, CPU)
    for s, part in zip(range(0, n, 16), parts):
        acc.update(part, y[s:s + 16])
    full = torch.cat(parts, 1)
    for g, got in enumerate(acc.results()):
        assert_same(got, evaluate_logits(full[g], y, counts))


def test_bad_input_raises_one_line() -> None:
    acc = StreamingMetrics(EVALS, K, COUNTS, CPU)
    z, y = _logits(3, 10, K)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 16\] for K = 17 classes, got range \[0, 17\]"):
        acc.update(z, torch.cat([y[:-1], torch.tensor([17])]))
    with pytest.raises(ValueError, match=r"logits must have shape \[G, B, K\] with G = 3, K = 17, got \(2, 10, 17\)"):
        acc.update(z[:2], y)
    with pytest.raises(ValueError, match="at least one sample, got 0"):
        acc.results()
    with pytest.raises(ValueError, match=r"train_counts must have one entry per class \(K = 17\)"):
        StreamingMetrics(EVALS, K, COUNTS[:-1], CPU)


def test_no_batches_raise_as_the_host_path(trained) -> None:
    _, model, heads, cfgs = trained
    evals = [c.eval for c in cfgs]
    with pytest.raises(ValueError, match="logits must hold at least one sample, got 0"):
        stream_evaluate(model, heads, [], [40, 16, 6], evals, device=CPU, channels_last=False)
    with pytest.raises(ValueError, match="logits must hold at least one sample, got 0"):
        stream_final_evaluation(model, heads, [], [], [40, 16, 6], evals, device=CPU, channels_last=False)


def test_metrics_of_an_mps_model_accumulate_on_the_cpu() -> None:
    assert metrics_device(torch.device("mps")) == CPU  # MPS has no float64
    assert metrics_device(CPU) == CPU


# --- temperature fit on held logits ----------------------------------------------------------

def _trained(n: int, k: int, seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained-looking logits: a margin on the label for 65 % of rows, on another class otherwise."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=gen) * 1.5
    y = torch.randint(0, k, (n,), generator=gen)
    target = torch.where(torch.rand(n, generator=gen) < 0.65, y, torch.randint(0, k, (n,), generator=gen))
    z[torch.arange(n), target] += 6.0 + 3.0 * torch.rand(n, generator=gen)
    return z * scale, y


def test_fit_temperatures_equal_temperature_fit() -> None:
    """Member 0 over-confident, 1 separable (T at the 1e-2 bound), 2 constant rows (T = 1, no pass)."""
    z, y = _trained(300, 12, 0, 2.0)
    separable = torch.zeros(300, 12)
    separable[torch.arange(300), y] = 5.0
    stack = torch.stack([z, separable, torch.full((300, 12), 0.7)])
    held = [stack[:, s:s + 64] for s in range(0, 300, 64)]
    fits = fit_temperatures(held, [y[s:s + 64] for s in range(0, 300, 64)], cells=100)
    for g, fit in enumerate(fits):
        want = temperature_fit(stack[g], y)
        assert fit.temperature == pytest.approx(want.temperature, rel=1e-10)
        assert fit.passes == want.passes
    assert fits[0].temperature > 1.0
    assert fits[1].temperature == 1e-2 and fits[2] == (1.0, 0)


def test_fit_temperatures_refuse_non_finite() -> None:
    z, y = _trained(20, 4, 0, 1.0)
    z[3, 1] = math.nan
    z[5, 2] = math.inf
    with pytest.raises(ValueError, match="val_logits must be finite, got 1 NaN and 1 infinite entries"):
        fit_temperatures([z[None]], [y])


@pytest.mark.parametrize(("n", "k", "scale"), [(500, 10, 2.0), (400, 100, 1.0), (300, 1000, 3.0), (2000, 50, 0.5)])
def test_bf16_held_logits_within_the_stated_bound(n: int, k: int, scale: float) -> None:
    for seed in range(3):
        z, y = _trained(n, k, seed, scale)
        z = z + 40.0  # a common offset (a bias): held shifted by the row max, it costs nothing
        rows = range(0, n, 64)
        exact = fit_temperatures([z[None, s:s + 64] for s in rows], [y[s:s + 64] for s in rows])[0].temperature
        held = [(z[None, s:s + 64] - z[None, s:s + 64].amax(2, keepdim=True)).bfloat16() for s in rows]
        half = fit_temperatures(held, [y[s:s + 64] for s in rows])[0].temperature
        assert abs(half / exact - 1.0) <= BF16_TEMPERATURE_RTOL
        assert half != exact  # bfloat16 did round


# --- a tiny real network: the drop-in functions against the host path ---------------------------

def _cfg(n_bins: int = 15, **eval_kw: Any) -> RunConfig:
    return RunConfig(
        stage1=Stage1Config(arch="resnet32", epochs=2, lr=0.05, batch_size=16, weight_decay=5e-4, warmup_epochs=1,
                            milestones=(1,), mixup_alpha=1.0),
        eval=EvalConfig(batch_size=5, n_bins=n_bins, **eval_kw), seed=0, device="cpu", channels_last=False,
    )


@pytest.fixture(scope="module")
def trained(tiny: LTData) -> tuple[LTData, Network, list[nn.Module], list[RunConfig]]:
    """A Stage-1 ResNet-32 on the tiny set and G = 3 heads of three kinds.

    The val split has no class 2 (8 + 8 + 0: ragged batches of 5); each member has its own eval
    bins and splits.
    """
    data = replace(tiny, val=tiny_split([8, 8, 0], 2))
    model = train_stage1(data, _cfg(), device=CPU, progress=False).model
    linear = model.classifier
    assert isinstance(linear, nn.Linear)
    scaled = ScaledClassifier(copy.deepcopy(linear), train_weight=False, train_scale=False)
    with torch.no_grad():
        scaled.scale.copy_(torch.tensor([0.5, 1.5, 3.0]))
    heads: list[nn.Module] = [linear, scaled, TauNormClassifier(linear, 0.7)]
    cfgs = [_cfg(), _cfg(n_bins=10, many_above=20, few_below=10), _cfg(n_bins=7)]
    return data, model, heads, cfgs


def test_evaluate_heads_streaming_equals_evaluate_heads(trained) -> None:
    data, model, heads, cfgs = trained
    for split in ("val", "test"):
        got = evaluate_heads_streaming(model, heads, data, split, cfgs, CPU)
        want = evaluate_heads_host(model, heads, data, split, cfgs, CPU)
        for g, w in zip(got, want):
            assert_same(g, w)
    assert not math.isnan(got[0].per_class_acc[2])  # test has class 2
    val = evaluate_heads_streaming(model, heads, data, "val", cfgs, CPU)
    assert all(math.isnan(v.per_class_acc[2]) for v in val)


def test_final_evaluation_streaming_equals_final_evaluation(trained) -> None:
    data, model, heads, cfgs = trained
    got = final_evaluation_streaming(model, heads, data, cfgs, CPU)
    want = final_evaluation_host(model, heads, data, cfgs, CPU)
    for g, w in zip(got, want):
        assert_same(g.val, w.val)
        assert_same(g.test, w.test)
        assert g.temperature == pytest.approx(w.temperature, rel=1e-10)
        assert_same(g.val_ts, w.val_ts, rel=1e-6)
        assert_same(g.test_ts, w.test_ts, rel=1e-6)
    assert len({round(g.temperature, 6) for g in got}) == 3  # three different heads, three fits


def test_final_evaluation_with_bf16_held_logits(trained) -> None:
    from mislas.stages import eval_batches

    data, model, heads, cfgs = trained
    exact = final_evaluation_streaming(model, heads, data, cfgs, CPU)
    half = stream_final_evaluation(model, heads, eval_batches(data, "val", cfgs[0], CPU),
                                   eval_batches(data, "test", cfgs[0], CPU), data.class_counts,
                                   [c.eval for c in cfgs], device=CPU, channels_last=False,
                                   hold_dtype=torch.bfloat16)
    for e, h in zip(exact, half):
        assert_same(h.val, e.val, rel=0.0, nll_rel=0.0)  # the plain metrics do not see the held copy
        assert_same(h.test, e.test, rel=0.0, nll_rel=0.0)
        assert abs(h.temperature / e.temperature - 1.0) <= BF16_TEMPERATURE_RTOL


@pytest.mark.parametrize("hold_bytes", [1, 2 * 16 * 3 * 4])
def test_final_evaluation_over_the_hold_budget_recomputes_the_same(trained, hold_bytes: int) -> None:
    """Past ``hold_bytes`` the fit recomputes the val logits from the held features: the same numbers.

    Chunks of 1 and of 2 members (16 val rows × 3 classes × 4 bytes per member).
    """
    from mislas.stages import eval_batches

    data, model, heads, cfgs = trained
    whole = final_evaluation_streaming(model, heads, data, cfgs, CPU)
    chunked = stream_final_evaluation(model, heads, eval_batches(data, "val", cfgs[0], CPU),
                                      eval_batches(data, "test", cfgs[0], CPU), data.class_counts,
                                      [c.eval for c in cfgs], device=CPU, channels_last=False, hold_bytes=hold_bytes)
    for w, c in zip(whole, chunked):
        assert c.temperature == w.temperature
        for got, want in ((c.val, w.val), (c.test, w.test), (c.val_ts, w.val_ts), (c.test_ts, w.test_ts)):
            assert_same(got, want, rel=0.0, nll_rel=0.0)


def test_the_benchmark_compares_like_with_like() -> None:
    """benchmarks.paper_scale.bench_eval's host and streamed paths give the same results on its inputs.

    Tiny shape; the paper-scale one is the same code.
    """
    from benchmarks.paper_scale import eval_inputs
    from mislas.stages import predict_heads

    val, _, backbone, heads, counts = eval_inputs(50, 30, 8, 2, 16)
    logits, labels = predict_heads(backbone, heads, val, CPU, False)
    got = stream_evaluate(backbone, heads, val, counts, [EvalConfig()] * 2, device=CPU, channels_last=False)
    for g, lg in zip(got, logits):
        assert_same(g, evaluate_logits(lg, labels, counts))
    assert 20.0 < got[0].acc < 100.0  # trained-looking: right most of the time, not always
