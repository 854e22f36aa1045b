"""Grouped Stage 2 (mislas.group): each trial ends where it would end alone, on one backbone pass."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mislas.config import RunConfig, Stage1Config, Stage2Config
from mislas.data import LTData
from mislas.group import check_group, train_stage2_group
from mislas.stages import StageResult, train_stage1, train_stage2

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**stage2: object) -> RunConfig:
    return RunConfig(
        stage1=Stage1Config(arch="resnet32", epochs=1, lr=0.05, batch_size=16, warmup_epochs=1, milestones=()),
        stage2=replace(Stage2Config(epochs=2, lr=0.05, batch_size=16, eps_1=0.3, eps_k=0.1, dw_ratio=0.2), **stage2),
        seed=0, device="cpu", channels_last=False,
    )


@pytest.fixture(scope="module")
def stage1(tiny: LTData) -> StageResult:
    return train_stage1(tiny, _cfg(), device=CPU, progress=False)


def _close(a: dict[str, float | None], b: dict[str, float | None]) -> bool:
    """Summaries agree: the same keys, the same Nones (splits with no class), numbers within float error."""
    return a.keys() == b.keys() and all(
        (a[k] is None) == (b[k] is None) and (a[k] is None or a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6))
        for k in a
    )


def _assert_same(group: StageResult, alone: StageResult) -> None:
    a, b = group.model.classifier.state_dict(), alone.model.classifier.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    bufs_g, bufs_a = dict(group.model.body.named_buffers()), dict(alone.model.body.named_buffers())
    for k in bufs_a:  # shift BN statistics ended in the same place
        assert torch.allclose(bufs_g[k].float(), bufs_a[k].float(), rtol=1e-5, atol=1e-6), k
    assert [r.epoch for r in group.epochs] == [r.epoch for r in alone.epochs]
    for rg, ra in zip(group.epochs, alone.epochs):
        assert (rg.lr, rg.classifier_lr) == pytest.approx((ra.lr, ra.classifier_lr), nan_ok=True)  # LWS: no classifier lr
        assert rg.train_loss == pytest.approx(ra.train_loss, rel=1e-6)
        assert _close(rg.val, ra.val)
    assert _close(group.val.summary(), alone.val.summary())
    assert _close(group.test.summary(), alone.test.summary())
    assert np.allclose(group.weight_norms, alone.weight_norms, rtol=1e-5)


@pytest.mark.parametrize("vectorize", [False, True])
def test_mislas_group_equals_trials_run_alone(tiny: LTData, stage1: StageResult, vectorize: bool) -> None:
    cfgs = [
        _cfg(shift_bn=True),
        _cfg(shift_bn=True, eps_1=0.4, eps_k=0.0, form="exp", p=2.0, dw_ratio=0.5, lr=0.1, las_target="reference"),
        _cfg(shift_bn=True, eps_1=0.1, eps_k=0.05, form="convex", dw_ratio=0.1, weight_decay=1e-3, momentum=0.8),
    ]
    seen: list[tuple[int, int]] = []
    grouped = train_stage2_group(tiny, stage1.model, cfgs, device=CPU, progress=False, vectorize=vectorize,
                                 on_epoch=lambda i, r: seen.append((i, r.epoch)))
    assert seen == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
    for cfg, g in zip(cfgs, grouped):
        alone = train_stage2(tiny, stage1.model, cfg, device=CPU, progress=False)
        _assert_same(g, alone)
        assert np.allclose(g.extras["epsilon"], alone.extras["epsilon"])
        assert g.extras["las_target"] == cfg.stage2.las_target
    # the trials really differ (else the comparison above would prove little)
    w = [g.model.classifier.linear.weight for g in grouped]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[0], w[2])
    # the Stage-1 model is untouched
    assert isinstance(stage1.model.classifier, torch.nn.Linear)


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("method", ["crt", "lws"])
def test_baseline_groups_equal_trials_run_alone(tiny: LTData, stage1: StageResult, method: str,
                                                vectorize: bool) -> None:
    cfgs = [_cfg(method=method, epochs=2), _cfg(method=method, epochs=2, lr=0.2, shift_bn=False, momentum=0.5)]
    grouped = train_stage2_group(tiny, stage1.model, cfgs, device=CPU, progress=False, vectorize=vectorize)
    for cfg, g in zip(cfgs, grouped):
        _assert_same(g, train_stage2(tiny, stage1.model, cfg, device=CPU, progress=False))


def test_one_backbone_pass_per_batch(tiny: LTData, stage1: StageResult) -> None:
    """Body forwards do not grow with the group size: train batches + val per epoch, + test once."""
    calls = []
    handle = stage1.model.body.register_forward_hook(lambda *_: calls.append(1))
    try:
        for size in (1, 4):
            calls.clear()
            cfgs = [_cfg(eps_1=0.1 * (i + 1)) for i in range(size)]
            train_stage2_group(tiny, stage1.model, cfgs, device=CPU, progress=False)  # deepcopy keeps the hook
            per_epoch = -(-3 * 40 // 16) + 1  # class-aware epoch K * n_max = 120 samples; val: 24 images, 1 batch
            assert len(calls) == 2 * per_epoch + 1, size
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (replace(_cfg(), seed=1), "seed"),
        (_cfg(epochs=3), "stage2.epochs"),
        (_cfg(batch_size=8), "stage2.batch_size"),
        (_cfg(samples_per_class=2), "stage2.samples_per_class"),
        (_cfg(shift_bn=False), "stage2.shift_bn"),
        (_cfg(method="lws"), "stage2.method"),
    ],
)
def test_group_refuses_configs_that_cannot_share(other: RunConfig, field: str) -> None:
    with pytest.raises(ValueError, match=f"must share {field}, got"):
        check_group([_cfg(), other])


def test_group_refuses_untrained_methods_and_empty() -> None:
    with pytest.raises(ValueError, match="tau_norm"):
        check_group([_cfg(method="tau_norm")])
    with pytest.raises(ValueError, match="at least one"):
        check_group([])
    check_group([_cfg(method="crt", shift_bn=True), _cfg(method="crt", shift_bn=False)])  # no shift BN in cRT
