"""Temperature scaling checked against an independent float64 numpy NLL."""

from __future__ import annotations

import doctest
import math
from typing import Any

import numpy as np
import pytest
import torch

import mislas.calibration as calibration
from benchmarks.synthetic import trained_logits
from mislas.calibration import (
    TEMPERATURE_BOUNDS,
    apply_temperature,
    fit_temperature,
    temperature_fit,
    temperature_scaled_results,
)
from mislas.metrics import evaluate_logits

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_PASSES = 10  # issue 16: the fit makes at most 10 passes over the logits


def _np_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """Independent reference: mean −log softmax(z / T)_y in float64 with a stable log-sum-exp."""
    s = np.asarray(z, dtype=np.float64) / t
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float(np.mean(lse - s[np.arange(s.shape[0]), y]))


def _scaled_sample(seed: int, s: float, n: int = 20000, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Logits z = s·u with labels drawn from softmax(u): the NLL-optimal T is near s."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 2.0, size=(n, k))
    p = np.exp(u - u.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return s * u, y


def _np_root_t(z: np.ndarray, y: np.ndarray) -> float:
    """Independent reference optimum: bisection in log T on the sign of dNLL/dT, numpy float64.

    dNLL/dT = −(mean_i E_p[z_i] − z_{i,y_i}) / T² with p = softmax(z / T); 64 halvings of
    [log T_min, log T_max] (width 9.2) leave it at 5e-19, below float resolution."""
    z = np.asarray(z, dtype=np.float64)
    zy = z[np.arange(z.shape[0]), y]

    def slope_sign(t: float) -> float:
        s = z / t
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return float(np.sign(-np.mean((p * z).sum(axis=1) - zy)))

    lo, hi = math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1])
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        if slope_sign(math.exp(mid)) < 0:  # NLL still falling: the optimum is at larger T
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the fit's passes over the logits (calls of the one function that takes a softmax)."""
    calls = [0]
    inner = calibration._grad_curv

    def wrapper(z: torch.Tensor, y: torch.Tensor, beta: float) -> tuple[float, float]:
        calls[0] += 1
        return inner(z, y, beta)

    monkeypatch.setattr(calibration, "_grad_curv", wrapper)
    return calls


def _pass_cases() -> list[Any]:
    out = []
    for seed, s in [(0, 0.5), (1, 2.5), (2, 6.0), (3, 1.0), (4, 90.0), (6, 0.012)]:  # the last two: near a bound
        z, y = _scaled_sample(seed, s, n=2000)
        out.append(pytest.param(torch.tensor(z), torch.tensor(y), id=f"scale {s}"))
    for seed in (0, 1, 2):  # mis-specified, as in test_fitted_t_is_a_minimum_of_the_nll
        z, y = _scaled_sample(seed, 3.0, n=3000, k=7)
        z = z + np.random.default_rng(100 + seed).normal(0.0, 1.5, size=z.shape)
        out.append(pytest.param(torch.tensor(z, dtype=torch.float32), torch.tensor(y), id=f"noisy {seed}"))
    for seed in (0, 1):  # iNat-shaped (8,142 classes), fewer rows
        z, y = trained_logits(200, 8142, seed=seed)
        out.append(pytest.param(z, y, id=f"inat-shaped {seed}"))
    return out


@pytest.mark.parametrize(("z", "y"), _pass_cases())
def test_converges_in_few_passes_to_the_independent_optimum(counted: list[int], z: torch.Tensor,
                                                            y: torch.Tensor) -> None:
    fit = temperature_fit(z, y)
    assert fit.passes == counted[0]  # the reported count is the real one
    assert 3 <= fit.passes <= MAX_PASSES
    want = _np_root_t(z.numpy(), y.numpy())
    assert TEMPERATURE_BOUNDS[0] < want < TEMPERATURE_BOUNDS[1]
    assert fit.temperature == pytest.approx(want, rel=1e-9)
    assert fit_temperature(z, y) == fit.temperature


@pytest.mark.parametrize(("seed", "s", "bound"), [(5, 150.0, 1), (7, 0.007, 0)])
def test_optimum_beyond_a_bound_returns_the_bound_in_two_passes(counted: list[int], seed: int, s: float,
                                                               bound: int) -> None:
    """The NLL optimum lies outside [T_min, T_max] (near s): the bound, after the T = 1 and bound passes."""
    z, y = _scaled_sample(seed, s, n=2000)
    fit = temperature_fit(torch.tensor(z), torch.tensor(y))
    assert fit == (TEMPERATURE_BOUNDS[bound], 2) and counted[0] == 2
    # the NLL really is still falling at the bound, toward the outside
    t = TEMPERATURE_BOUNDS[bound]
    outward = t * (1.01 if bound else 0.99)
    assert _np_nll(z, y, outward) < _np_nll(z, y, t)


def test_newton_landing_on_the_bracket_end_stops(counted: list[int]) -> None:
    """Issue 16's case: Newton reaches the root from one side, its last step lands within a float
    step of the bracket's end; the old ``lo < nxt`` test sent it to bisection (53 passes here)."""
    z, y = _scaled_sample(1, 2.5, n=2000)
    fit = temperature_fit(torch.tensor(z), torch.tensor(y))
    assert fit.passes == counted[0] <= 8
    assert fit.temperature == pytest.approx(_np_root_t(z, y), rel=1e-9)


def test_bisection_safeguard_finds_the_root_when_newton_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A curvature reported as 0 makes every Newton step NaN: bisection alone must still find the root."""
    z, y = _scaled_sample(8, 2.0, n=1000, k=6)
    inner = calibration._grad_curv
    monkeypatch.setattr(calibration, "_grad_curv", lambda zz, yy, b: (inner(zz, yy, b)[0], 0.0))
    fit = temperature_fit(torch.tensor(z), torch.tensor(y))
    assert fit.temperature == pytest.approx(_np_root_t(z, y), rel=1e-6)
    assert fit.passes < calibration._MAX_ITER  # ended on the bracket's width, not the iteration cap


@pytest.mark.parametrize(("seed", "s"), [(0, 0.5), (1, 2.5), (2, 6.0), (3, 1.0)])
def test_recovers_known_scale(seed: int, s: float) -> None:
    z, y = _scaled_sample(seed, s)
    t = fit_temperature(torch.tensor(z), torch.tensor(y))
    assert t == pytest.approx(s, rel=0.03)  # sampling error at N = 20,000 is under 1 %


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_t_is_a_minimum_of_the_nll(seed: int) -> None:
    # Mis-specified on purpose (extra noise), so the optimum is no special value.
    z, y = _scaled_sample(seed, 3.0, n=3000, k=7)
    z = z + np.random.default_rng(100 + seed).normal(0.0, 1.5, size=z.shape)
    t = fit_temperature(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    at_t = _np_nll(z.astype(np.float32), y, t)
    for factor in (1 - 1e-3, 1 + 1e-3):
        assert _np_nll(z.astype(np.float32), y, t * factor) >= at_t
    # and no point of a dense log-T grid does better
    grid = np.exp(np.linspace(math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1]), 401))
    assert min(_np_nll(z.astype(np.float32), y, float(g)) for g in grid) >= at_t - 1e-12


def test_already_calibrated_logits_give_t_one() -> None:
    """Each row's labels are replicated in exactly its softmax proportions, so the empirical
    NLL is the expected NLL under softmax(z), minimised at T = 1 exactly."""
    groups = [
        ([math.log(3.0), 0.0, math.log(1e-12)], [0, 0, 0, 1]),  # 3/4, 1/4, ~0
        ([math.log(2.0), 0.0, 0.0], [0, 0, 1, 2]),  # 1/2, 1/4, 1/4
        ([math.log(6.0), math.log(3.0), 0.0], [0] * 6 + [1] * 3 + [2]),  # 0.6, 0.3, 0.1
        ([0.0, 0.0, math.log(8.0)], [0] + [1] + [2] * 8),  # 0.1, 0.1, 0.8
    ]
    rows = [z for z, ys in groups for _ in ys]
    labels = [y for _, ys in groups for y in ys]
    perm = np.random.default_rng(5).permutation(len(rows))
    z = torch.tensor(rows, dtype=torch.float64)[perm] + 7.0  # a shift changes nothing
    y = torch.tensor(labels)[perm]
    t = fit_temperature(z, y)
    assert t == pytest.approx(1.0, abs=1e-3)
    assert t == pytest.approx(1.0, abs=1e-9)  # the method is exact, not just close
    # scaling the logits by s makes the optimum s
    assert fit_temperature(2.5 * z, y) == pytest.approx(2.5, rel=1e-9)


def test_separable_data_returns_lower_bound() -> None:
    g = torch.Generator().manual_seed(6)
    z = torch.randn(200, 5, generator=g)
    y = z.argmax(dim=1)  # every label the strict arg-max: NLL -> 0 as T -> 0
    assert temperature_fit(z, y) == (TEMPERATURE_BOUNDS[0], 2)


def test_anti_informative_logits_return_upper_bound() -> None:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(200, 5, generator=g)
    y = z.argmin(dim=1)  # the label is always the least likely class: flattest is best
    assert temperature_fit(z, y) == (TEMPERATURE_BOUNDS[1], 2)


def test_constant_rows_give_t_one() -> None:
    z = torch.full((6, 4), 3.0)
    z[3] = -1.0
    assert fit_temperature(z, torch.tensor([0, 1, 2, 3, 0, 1])) == 1.0


def test_invariances_and_dtypes() -> None:
    z, y = _scaled_sample(8, 1.7, n=2000, k=6)
    t = fit_temperature(torch.tensor(z), torch.tensor(y))
    shifted = z + np.random.default_rng(9).normal(0, 50, size=(2000, 1))  # per-row constants
    assert fit_temperature(torch.tensor(shifted), torch.tensor(y)) == pytest.approx(t, rel=1e-9)
    assert fit_temperature(torch.tensor(z, dtype=torch.float32), torch.tensor(y)) == pytest.approx(t, rel=1e-5)
    assert fit_temperature(z, y) == pytest.approx(t, rel=1e-12)  # numpy in
    perm = np.random.default_rng(10).permutation(2000)
    assert fit_temperature(torch.tensor(z[perm]), torch.tensor(y[perm])) == pytest.approx(t, rel=1e-9)


def test_chunked_matches_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    z, y = _scaled_sample(11, 0.8, n=500, k=9)
    t = fit_temperature(torch.tensor(z), torch.tensor(y))
    monkeypatch.setattr(calibration, "_CHUNK_CELLS", 9 * 37)
    assert fit_temperature(torch.tensor(z), torch.tensor(y)) == pytest.approx(t, rel=1e-10)


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "at least one"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), torch.tensor([0, 1]), "1 NaN and 0 infinite"),
        (torch.tensor([[0.0, float("inf")], [-float("inf"), 0.0]]), torch.tensor([0, 1]), "0 NaN and 2 infinite"),
        (torch.tensor([[1, 0], [0, 1]]), torch.tensor([0, 1]), "floating point"),
        (torch.zeros(3), torch.tensor([0, 1, 2]), "shape"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), "labels"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), "labels"),
    ],
)
def test_fit_temperature_validation(logits: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels)


def test_apply_temperature() -> None:
    z = torch.randn(20, 5, generator=torch.Generator().manual_seed(12))
    out = apply_temperature(z, 2.0)
    assert torch.equal(out, z / 2.0) and torch.equal(out.argmax(1), z.argmax(1))
    half = apply_temperature((z * 1000).half(), 0.01)  # would overflow float16
    assert half.dtype == torch.float32 and bool(torch.isfinite(half).all())
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(z, bad)


def test_temperature_scaled_results() -> None:
    counts = [500, 300, 150, 60, 30, 10]
    zv, yv = _scaled_sample(13, 2.0, n=1200, k=6)
    zt, yt = _scaled_sample(14, 2.0, n=1200, k=6)
    t, val, test = temperature_scaled_results(
        torch.tensor(zv, dtype=torch.float32), torch.tensor(yv), torch.tensor(zt, dtype=torch.float32),
        torch.tensor(yt), counts, n_bins=10,
    )  # fmt: skip
    assert t == pytest.approx(fit_temperature(torch.tensor(zv, dtype=torch.float32), torch.tensor(yv)), rel=1e-12)
    assert t == pytest.approx(2.0, rel=0.1)
    want_test = evaluate_logits(torch.tensor(zt, dtype=torch.float32) / t, torch.tensor(yt), counts, n_bins=10)
    assert test.summary() == pytest.approx(want_test.summary())
    assert len(test.reliability) == 10  # kwargs reached evaluate_logits
    before_val = evaluate_logits(torch.tensor(zv), torch.tensor(yv), counts)
    before_test = evaluate_logits(torch.tensor(zt), torch.tensor(yt), counts)
    assert val.nll <= before_val.nll + 1e-9  # T minimises the val NLL
    assert test.acc == before_test.acc  # top-1 unchanged by T
    assert val.nll == pytest.approx(_np_nll(zv.astype(np.float32), yv, t), rel=1e-5)


def test_module_doctests_pass() -> None:
    result = doctest.testmod(calibration)
    assert result.attempted > 0 and result.failed == 0
