"""Post-hoc temperature scaling, the calibration baseline.

Post-hoc temperature scaling (Guo et al. 2017), the usual baseline MiSLAS's calibration is
compared against: one scalar T > 0 fitted on validation logits, test logits divided by T.

Temperature scaling leaves the arg-max, hence top-1, unchanged and changes only confidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from mislas.metrics import ArrayLike, EvalResult, evaluate_logits
from mislas.metrics.inputs import _check_logits_labels, _np, _torch

# The search interval for T. A fit that ends on a bound means the NLL is still falling there
# (separable data for the lower bound, logits carrying no signal for the upper one).
TEMPERATURE_BOUNDS: tuple[float, float] = (1e-2, 1e2)

# Rows per chunk: keeps the float64 temporaries near 2**20 cells whatever K is.
_CHUNK_CELLS = 1 << 20
_MAX_ITER = 200
# Newton stops once its step changes log T by at most this (see fit_temperature).
_LOG_T_STEP_TOL = 1e-7
_MAX_LOG_STEP = 50.0  # exp() stays finite; the bracket test then bisects


def _as_logits(logits: ArrayLike, name: str = "logits") -> torch.Tensor:
    lg = _torch(logits)
    if lg.ndim != 2:
        raise ValueError(f"{name} must have shape [N, K], got {tuple(lg.shape)}")
    if lg.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got 0")
    if not lg.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got dtype {lg.dtype}")
    if not bool(torch.isfinite(lg).all()):
        n_nan = int(torch.isnan(lg).sum())
        n_inf = int(torch.isinf(lg).sum())
        raise ValueError(f"{name} must be finite, got {n_nan} NaN and {n_inf} infinite entries")
    return lg


def _grad_curv(z: torch.Tensor, y: torch.Tensor, beta: float) -> tuple[float, float]:
    """dNLL/dβ and d²NLL/dβ² of NLL(β) = mean_i [logsumexp(β z_i) − β z_{i, y_i}].

    With p = softmax(β z): the gradient is mean_i (E_p[z_i] − z_{i, y_i}) and the curvature
    mean_i Var_p[z_i] ≥ 0, computed as E_p[(z − E_p z)²] to avoid cancellation.
    """
    n, k = z.shape
    step = max(1, _CHUNK_CELLS // k)
    g = 0.0
    h = 0.0
    for i in range(0, n, step):
        zc = z[i : i + step]
        p = torch.softmax(beta * zc, dim=1)
        m1 = (p * zc).sum(dim=1)
        g += float((m1 - zc.gather(1, y[i : i + step, None]).squeeze(1)).sum())
        h += float((p * (zc - m1[:, None]) ** 2).sum())
    return g / n, h / n


class TemperatureFit(NamedTuple):
    """A fitted temperature and the cost of the fit: ``passes`` log-softmax evaluations over the logits."""

    temperature: float
    passes: int


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The T > 0 minimising the mean NLL of softmax(logits / T) on ``(logits, labels)``.

    Method (:func:`temperature_fit`, which also counts the passes): safeguarded Newton on
    log β = −log T over [1/T_max, 1/T_min], in float64. The NLL is convex in β (a log-sum-exp
    of functions linear in β, minus a linear term) with closed-form gradient mean(E_p[z] − z_y)
    and curvature mean(Var_p[z]), so the minimiser is the root of a monotone 1-D function: the
    sign of the gradient keeps a bracket, Newton steps converge quadratically, and a geometric
    bisection takes over whenever a step would leave the bracket. Deterministic, no line
    search or initial-value tuning (LBFGS needs them), and, because it solves gradient = 0
    rather than comparing NLL values as golden section does (limited to ~sqrt(machine eps) by
    the flat minimum), exact to ~1e-12 relative.

    Cost: one pass (one softmax over all logits) at T = 1, one at the bound the gradient
    points to (the bound test), then one per Newton step: 5–8 passes in every case measured,
    against ~50 before the stopping rule below (see docs/performance.md).

    Stopping rule: stop when the Newton step changes log T by at most
    :data:`_LOG_T_STEP_TOL` = 1e-7 (|gradient| / (β · curvature), the predicted distance to the
    root relative to T), after taking that last step: Newton's error after a step is of order
    the step squared, so the result is exact to ~1e-12 relative at no extra pass. Also stop
    when the bracket is narrower than that (bisection's end) or the gradient is exactly 0.
    Newton's last steps may land within a float step of the bracket's end; the stopping test
    comes before the bracket test, so such a step ends the fit instead of sending it to
    bisection (the cause of the ~50 passes).

    Edge cases: the bounds are :data:`TEMPERATURE_BOUNDS` = (1e-2, 1e2). If the NLL still
    decreases at a bound, that bound is returned: T = 1e-2 for perfectly separable data (every
    label the strict arg-max, where the NLL falls toward 0 as T → 0), T = 1e2 when the logits
    carry no usable signal. If every row is constant the NLL does not depend on T and 1.0 is
    returned. Empty input, a non-2-D or integer ``logits``, NaN / infinite logits and bad
    labels raise ValueError.

    Hand-worked example: the logit row (log 3, 0) seen 4 times, with labels 0, 0, 0, 1, is
    already calibrated (softmax gives 3/4, the label frequency), so T = 1.

    >>> round(fit_temperature([[math.log(3.0), 0.0]] * 4, [0, 0, 0, 1]), 9)
    1.0
    """
    return temperature_fit(logits, labels).temperature


def temperature_fit(logits: ArrayLike, labels: ArrayLike) -> TemperatureFit:
    """:func:`fit_temperature` with the number of passes over the logits it took."""
    lg = _as_logits(logits)
    lb = _torch(labels)
    _check_logits_labels(lg, lb)
    z = lg.detach().to(device="cpu", dtype=torch.float64)
    z = z - z.max(dim=1, keepdim=True).values  # shift-invariant; keeps E_p[z] − z_y well scaled
    y = lb.detach().to(device="cpu", dtype=torch.long)
    if not bool((z != 0).any()):
        return TemperatureFit(1.0, 0)  # every row constant: softmax is uniform for every T
    beta, passes = _newton_beta(lambda b: _grad_curv(z, y, b))
    return TemperatureFit(1.0 / beta, passes)


def _newton_beta(grad_curv: Callable[[float], tuple[float, float]]) -> tuple[float, int]:
    """Find β by safeguarded Newton steps; return it and the number of evaluations.

    The root β of a monotone increasing gradient in [1/T_max, 1/T_min] (or the bound it is
    beyond) and the number of ``grad_curv`` evaluations; the method is :func:`fit_temperature`'s.
    """
    t_min, t_max = TEMPERATURE_BOUNDS
    lo, hi = 1.0 / t_max, 1.0 / t_min  # bracket in β
    beta = 1.0
    g, h = grad_curv(beta)
    passes = 1
    if g == 0.0:
        return beta, passes
    passes += 1
    start = _bracket(grad_curv, lo, hi, beta, g, h)
    if isinstance(start, float):
        return start, passes
    return _newton_steps(grad_curv, start, passes)


class _NewtonStart(NamedTuple):
    """The bracket ``(lo, hi)`` in β and the point Newton starts from, with its gradient and curvature."""

    lo: float
    hi: float
    beta: float
    g: float
    h: float


def _bracket(grad_curv: Callable[[float], tuple[float, float]], lo: float, hi: float, beta: float, g: float,
             h: float) -> float | _NewtonStart:
    """Test the bound the gradient at β points to: that bound if the NLL still falls there, else the start.

    One ``grad_curv`` evaluation, at the bound. The bracket becomes (β, bound) or (bound, β);
    Newton starts at the bound instead of β when the bound's Newton step is the shorter.
    """
    if g < 0.0:  # the root is above β = 1, or beyond the small-T bound
        far = hi
        g_far, h_far = grad_curv(far)
        if g_far <= 0.0:
            return hi  # NLL still falling at the smallest T
        lo = beta
    else:
        far = lo
        g_far, h_far = grad_curv(far)
        if g_far >= 0.0:
            return lo  # NLL still falling at the largest T
        hi = beta
    if abs(g_far) * beta * h < abs(g) * far * h_far:  # the bound's Newton step is the shorter: start there
        beta, g, h = far, g_far, h_far
    return _NewtonStart(lo, hi, beta, g, h)


def _newton_steps(grad_curv: Callable[[float], tuple[float, float]], start: _NewtonStart,
                  passes: int) -> tuple[float, int]:
    """Newton steps on log β from ``start``, bisecting when a step leaves the bracket; β and the passes."""
    lo, hi, beta, g, h = start
    for _ in range(_MAX_ITER):
        step = -g / (beta * h) if h > 0.0 else math.nan  # Newton on log β: d g / d log β = β h
        if abs(step) <= _LOG_T_STEP_TOL:
            return min(max(beta * math.exp(step), lo), hi), passes
        beta = _next_beta(beta, h, step, lo, hi)
        g, h = grad_curv(beta)
        passes += 1
        if g == 0.0:
            break
        if g < 0.0:
            lo = beta
        else:
            hi = beta
        if hi / lo - 1.0 <= _LOG_T_STEP_TOL:
            return math.sqrt(lo * hi), passes
    return beta, passes


def _next_beta(beta: float, h: float, step: float, lo: float, hi: float) -> float:
    """The Newton step's β (log step capped at :data:`_MAX_LOG_STEP`), or the bracket's geometric midpoint.

    The midpoint replaces a step that would leave (lo, hi) or is NaN (no positive curvature).
    """
    nxt = beta * math.exp(max(-_MAX_LOG_STEP, min(_MAX_LOG_STEP, step))) if h > 0.0 else math.nan
    if not lo < nxt < hi:  # also catches NaN
        nxt = math.sqrt(lo * hi)
    return nxt


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``: the calibrated logits (top-1 unchanged for any T > 0).

    Half-precision logits are promoted to float32 first: T can be as small as 1e-2, and
    float16 overflows at 65504.
    """
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits / t


def temperature_scaled_results(
    val_logits: ArrayLike,
    val_labels: ArrayLike,
    test_logits: ArrayLike,
    test_labels: ArrayLike,
    class_counts: ArrayLike,
    **evaluate_logits_kwargs: Any,
) -> tuple[float, EvalResult, EvalResult]:
    """Fit T on validation, then evaluate validation and test logits divided by T.

    T comes from validation only, so test numbers stay unselected. ``evaluate_logits_kwargs``
    go to :func:`mislas.metrics.evaluate_logits` (``n_bins``, ``split_rule``).
    Returns (T, val result, test result).
    """
    val = _as_logits(val_logits, "val_logits")
    test = _as_logits(test_logits, "test_logits")
    t = fit_temperature(val, val_labels)
    counts = _np(class_counts)
    val_res = evaluate_logits(apply_temperature(val, t), val_labels, counts, **evaluate_logits_kwargs)
    test_res = evaluate_logits(apply_temperature(test, t), test_labels, counts, **evaluate_logits_kwargs)
    return t, val_res, test_res
