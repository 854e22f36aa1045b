"""benchmarks.legacy (the code issue 16 replaced, timed by ``--parts paper_scale --before``) is the
same math as the library's, so its before/after figures compare like with like."""

from __future__ import annotations

import pytest
import torch

from benchmarks.legacy import StackedHeadsBefore, fit_temperature_before
from benchmarks.paper_scale import members, peak_window, stacked_step
from benchmarks.synthetic import trained_logits
from mislas.calibration import temperature_fit
from mislas.stacked import StackedHeads

pytestmark = pytest.mark.usefixtures("one_thread")


def test_old_and_new_stacked_heads_train_alike() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 12, generator=gen), torch.randint(0, 9, (16,), generator=gen)
    old, new = StackedHeadsBefore(*members(3, 9, 12)), StackedHeads(*members(3, 9, 12))
    for _ in range(4):
        stacked_step(old, x, y)
        stacked_step(new, x, y)
    for name in ("weight", "bias", "scale"):
        assert torch.allclose(old.params[name], new.params[name], rtol=1e-5, atol=1e-7), name
        assert not torch.equal(new.params[name], StackedHeads(*members(3, 9, 12)).params[name]), name  # it trained
    for name in old.bufs:
        assert torch.allclose(old.bufs[name], new.bufs[name], rtol=1e-5, atol=1e-7), name


def test_old_fit_takes_more_passes_to_the_same_temperature() -> None:
    z, y = trained_logits(300, 500, seed=2)
    fit = temperature_fit(z, y)
    t_old, passes_old = fit_temperature_before(z, y)
    assert fit.temperature == pytest.approx(t_old, rel=1e-9)
    assert fit.passes < passes_old


def test_peak_window_sees_a_big_allocation() -> None:
    n = 64 << 20  # 64 MiB
    got = peak_window(lambda: torch.ones(n // 4).sum())
    assert 0.9 * n <= got <= 1.5 * n
