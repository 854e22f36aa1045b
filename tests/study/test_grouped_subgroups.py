"""A study group whose members cannot share one backbone pass (mixed shift BN) is split, not refused."""

from __future__ import annotations

import pytest
import torch

from mislas.data import LTData
from mislas.stage2 import train_subgroups
from mislas.stages import train_stage1, train_stage2
from tests.helpers import tiny_cfg as _cfg  # the same tiny Stage-1/Stage-2 budget as test_stage2_group_parity

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_mixed_shift_bn_members_run_as_subgroups(tiny: LTData) -> None:
    model = train_stage1(tiny, _cfg(), device=CPU, progress=False).model
    cfgs = [_cfg(shift_bn=True, eps_1=0.3), _cfg(shift_bn=False, eps_1=0.2), _cfg(shift_bn=True, eps_1=0.1)]
    seen: list[tuple[int, int]] = []
    results = train_subgroups(tiny, model, cfgs, device=CPU, checkpoint_dir=None,
                              on_epoch=lambda i, r: seen.append((i, r.epoch)), progress=False)
    assert sorted(seen) == [(i, e) for i in range(3) for e in (1, 2)]
    for cfg, grouped in zip(cfgs, results):
        alone = train_stage2(tiny, model, cfg, device=CPU, progress=False)
        a, b = alone.model.classifier.state_dict(), grouped.model.classifier.state_dict()
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
        assert grouped.test.acc == pytest.approx(alone.test.acc)
