"""The implementations issue 16 replaced, kept only so the benchmark can time before and after
side by side in one process (``python -m benchmarks.run --parts paper_scale --before``).

- :func:`fit_temperature_before`: ``mislas.calibration.fit_temperature`` before the stopping
  rule (Newton on β whose last step, landing within a float step of the bracket's end, sent it
  to bisection down to 1e-13: ~50 passes).
- :class:`StackedHeadsBefore`: ``mislas.stacked.StackedHeads`` with the old forward (``baddbmm``
  against W transposed, so autograd copied the G×K×D gradient back each step) and the old SGD
  update (three G×K×D temporaries).
- :func:`rebuild_unions_before`: ``study.results.rebuild_unions`` before it streamed: every
  union read whole into memory (one ``pyarrow.dataset`` table), then serialised whole to bytes
  and written (peak: about twice the union).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from mislas.calibration import TEMPERATURE_BOUNDS, _grad_curv
from mislas.stacked import StackedHeads
from study import results
from study.schema import TABLES
from study.storage import Store


def fit_temperature_before(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(T, passes) of the old fit, on float logits and integer labels already checked."""
    z = logits.detach().to(device="cpu", dtype=torch.float64)
    z = z - z.max(dim=1, keepdim=True).values
    y = labels.detach().to(device="cpu", dtype=torch.long)
    passes = 0

    def gc(beta: float) -> tuple[float, float]:
        nonlocal passes
        passes += 1
        return _grad_curv(z, y, beta)

    t_min, t_max = TEMPERATURE_BOUNDS
    lo, hi = 1.0 / t_max, 1.0 / t_min
    if gc(hi)[0] <= 0.0:
        return t_min, passes
    if gc(lo)[0] >= 0.0:
        return t_max, passes
    beta = 1.0
    for _ in range(200):
        g, h = gc(beta)
        if g == 0.0:
            break
        if g < 0.0:
            lo = beta
        else:
            hi = beta
        nxt = beta - g / h if h > 0.0 else math.nan
        if not lo < nxt < hi:
            nxt = math.sqrt(lo * hi)
        done = abs(nxt - beta) <= 1e-13 * beta or hi / lo - 1.0 <= 1e-13
        beta = nxt
        if done:
            break
    return 1.0 / beta, passes


class StackedHeadsBefore(StackedHeads):
    """The stacked heads' old forward and update (same math, more copies)."""

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        p = self.params
        g = p["weight"].shape[0]
        out = torch.baddbmm(p["bias"].unsqueeze(1), feats.unsqueeze(0).expand(g, -1, -1), p["weight"].transpose(1, 2))
        return (out * p["scale"].unsqueeze(1)).float()

    @torch.no_grad()
    def step(self) -> None:
        for name in self.groups:
            p = self.params[name]
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            d = p.grad + self.weight_decay[name].view(shape) * p
            self.bufs[name].mul_(self.momentum[name].view(shape)).add_(d)
            p.sub_(self.lr[name].view(shape) * self.bufs[name])
            p.grad = None


def rebuild_unions_before(store: Store, names: Sequence[str] = TABLES,
                          say: Callable[[str], None] = print) -> dict[str, int]:
    """The old union writer: all parts' rows of each table in memory, then one atomic write."""
    tables, _ = results.load_parts(store, names, set_aside=True, say=say)
    for name in names:
        results.write_table(store, tables[name], f"{name}.parquet")
    return {name: tables[name].num_rows for name in names}
