"""The Stage-2 engine (mislas.stages.train_stage2_group): each member ends where it would end alone.

"Alone" is a group of one since the engine was merged, so the engine is also checked against a
short hand-written Stage-2 loop in plain torch (:func:`test_engine_equals_a_hand_written_loop`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mislas import fastpath
from mislas.config import RunConfig
from mislas.data import LTData
from mislas.data.samplers import ClassAwareEpochs
from mislas.errors import NonFiniteError, UsageError
from mislas.las import LabelAwareSmoothing
from mislas.models import ScaledClassifier
from mislas.stage2 import subgroups
from mislas.stages import (
    EpochRecord,
    StageResult,
    check_group,
    class_aware_seed,
    epoch_seed,
    train_stage1,
    train_stage2,
    train_stage2_group,
)
from tests.helpers import tiny_cfg as _cfg  # the tiny budget test_grouped_subgroups shares

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


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
    cfgs = [_cfg(method=method, epochs=2), _cfg(method=method, epochs=2, lr=0.2, momentum=0.5, weight_decay=1e-3)]
    grouped = train_stage2_group(tiny, stage1.model, cfgs, device=CPU, progress=False, vectorize=vectorize)
    for cfg, g in zip(cfgs, grouped):
        _assert_same(g, train_stage2(tiny, stage1.model, cfg, device=CPU, progress=False))


def test_one_backbone_pass_per_batch(tiny: LTData, stage1: StageResult) -> None:
    """Body forwards do not grow with the group size: train batches + val per epoch, then the final
    evaluation's val (its logits fit the temperature) and test passes."""
    calls = []
    handle = stage1.model.body.register_forward_hook(lambda *_: calls.append(1))
    try:
        for size in (1, 4):
            calls.clear()
            cfgs = [_cfg(eps_1=0.1 * (i + 1)) for i in range(size)]
            train_stage2_group(tiny, stage1.model, cfgs, device=CPU, progress=False)  # deepcopy keeps the hook
            # reference epoch length: ceil(N/B) + 1 = ceil(62/16) + 1 = 5 batches (< K * n_max / B = 7.5); val:
            # 24 images, 1 batch; the final evaluation: val and test, 1 batch each
            per_epoch = math.ceil(sum(tiny.class_counts) / 16) + 1 + 1
            assert len(calls) == 2 * per_epoch + 2, size
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
        (_cfg(epoch_length="sampler"), "stage2.epoch_length"),
        (_cfg(mixup=True), "stage2.mixup"),
    ],
)
def test_group_refuses_configs_that_cannot_share(other: RunConfig, field: str) -> None:
    with pytest.raises(UsageError, match=f"must share {field}, got"):
        check_group([_cfg(), other])


def test_group_refuses_untrained_methods_and_empty() -> None:
    with pytest.raises(UsageError, match="tau_norm"):
        check_group([_cfg(method="tau_norm")])
    with pytest.raises(UsageError, match="at least one"):
        check_group([])
    # shift BN is the effective value: cRT's default (None) is on, so it groups with an explicit True ...
    check_group([_cfg(method="crt"), _cfg(method="crt", shift_bn=True)])
    # ... and not with False (cRT now re-estimates BN statistics, as Kang et al.'s code)
    with pytest.raises(UsageError, match="must share stage2.shift_bn"):
        check_group([_cfg(method="crt"), _cfg(method="crt", shift_bn=False)])
    # mixup_alpha matters only with mixup on
    check_group([_cfg(mixup_alpha=0.2), _cfg(mixup_alpha=1.0)])


def test_subgroups_split_by_the_shared_fields_in_first_member_order() -> None:
    """Members that cannot share a pass (here: shift BN, then the seed) land in separate sub-groups,
    each a group check_group accepts; the members that can share keep one group, in member order."""
    cfgs = [_cfg(shift_bn=True, eps_1=0.3), _cfg(shift_bn=False), replace(_cfg(shift_bn=True), seed=1),
            _cfg(shift_bn=True, eps_1=0.1), _cfg(shift_bn=False, dw_ratio=0.5)]
    assert subgroups(cfgs) == [[0, 3], [1, 4], [2]]
    for idx in subgroups(cfgs):
        check_group([cfgs[i] for i in idx])
    assert subgroups([_cfg(eps_1=e) for e in (0.1, 0.2, 0.3)]) == [[0, 1, 2]]
    assert subgroups([]) == []


def test_engine_equals_a_hand_written_loop(tiny: LTData, stage1: StageResult) -> None:
    """An independent Stage 2 in plain torch for one MiSLAS config: frozen body in train mode (shift BN),
    the class-aware batches of the same sampler, SGD with the two param groups (ΔW at ratio·lr, the scale
    at lr), the cosine factor set per epoch, the LAS loss; the engine must end in the same place."""
    cfg = _cfg(shift_bn=True, eps_1=0.4, eps_k=0.1, form="linear", dw_ratio=0.3, lr=0.08, momentum=0.85,
               weight_decay=5e-4, epochs=3, las_target="reference")
    s2 = cfg.stage2
    out = train_stage2(tiny, stage1.model, cfg, device=CPU, progress=False)

    body = copy.deepcopy(stage1.model.body)
    w = stage1.model.classifier.weight.detach().clone().requires_grad_(True)
    b = stage1.model.classifier.bias.detach().clone().requires_grad_(True)
    s = torch.ones(tiny.num_classes, requires_grad=True)
    opt = torch.optim.SGD([{"params": [w, b], "lr": s2.lr * s2.dw_ratio}, {"params": [s], "lr": s2.lr}],
                          lr=s2.lr, momentum=s2.momentum, weight_decay=s2.weight_decay)
    las = LabelAwareSmoothing(tiny.class_counts, s2.eps_1, s2.eps_k, form=s2.form, target=s2.las_target)
    n, bs = sum(tiny.class_counts), s2.batch_size
    steps = math.ceil(n / bs) + 1  # the reference's epoch: ceil(N/B) + 1 batches
    order = ClassAwareEpochs(tiny.train.labels, tiny.num_classes, seed=class_aware_seed(cfg.seed),
                             samples_per_epoch=steps * bs)
    gen = torch.Generator()
    batches = fastpath.train_batches(tiny, device=CPU, sampler=order, batch_size=bs, generator=gen,
                                     channels_last=False)
    losses = []
    for epoch in range(1, s2.epochs + 1):
        factor = 0.5 * (1 + math.cos(math.pi * (epoch - 1) / s2.epochs))
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = s2.lr * s2.dw_ratio * factor, s2.lr * factor
        gen.manual_seed(epoch_seed(cfg.seed, 2, epoch))
        order.set_epoch(epoch)
        body.train()
        total, count, taken = 0.0, 0, 0
        for x, y in batches:
            with torch.no_grad():
                feats = body(x)
            loss = las((feats @ w.T + b) * s, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
            taken += 1
        assert taken == steps
        losses.append(total / count)

    head = out.model.classifier
    assert isinstance(head, ScaledClassifier)
    assert torch.allclose(head.linear.weight, w, rtol=1e-5, atol=1e-6)
    assert torch.allclose(head.linear.bias, b, rtol=1e-5, atol=1e-6)
    assert torch.allclose(head.scale, s, rtol=1e-5, atol=1e-6)
    for (name, got), want in zip(out.model.body.named_buffers(), body.buffers()):
        assert torch.allclose(got.float(), want.float(), rtol=1e-5, atol=1e-6), name
    assert [r.train_loss for r in out.epochs] == pytest.approx(losses, rel=1e-5)
    assert [r.steps for r in out.epochs] == [steps] * s2.epochs


def test_group_resumes_from_its_per_epoch_checkpoint(tiny: LTData, stage1: StageResult, tmp_path: Path) -> None:
    """A group checkpoint holds every member's head, optimizer and schedule and the BN buffers."""
    cfgs = [_cfg(epochs=3), _cfg(epochs=3, eps_1=0.1, dw_ratio=0.5, lr=0.1)]
    full = train_stage2_group(tiny, stage1.model, cfgs, device=CPU, progress=False)

    def stop_at_two(_member: int, record: EpochRecord) -> None:
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stage2_group(tiny, stage1.model, cfgs, device=CPU, checkpoint_dir=tmp_path, on_epoch=stop_at_two,
                           progress=False)
    seen: list[tuple[int, int]] = []
    resumed = train_stage2_group(tiny, stage1.model, cfgs, device=CPU, checkpoint_dir=tmp_path, progress=False,
                                 vectorize=False, on_epoch=lambda i, r: seen.append((i, r.epoch)))
    assert seen == [(0, 3), (1, 3)]  # only the third epoch ran; stacked state resumed unstacked
    for f, r in zip(full, resumed):
        _assert_same(r, f)
    with pytest.raises(UsageError, match="another Stage-2 config"):
        train_stage2_group(tiny, stage1.model, cfgs[:1], device=CPU, checkpoint_dir=tmp_path, progress=False)


def test_stage2_mixup_in_a_group_and_alone(tiny: LTData, stage1: StageResult) -> None:
    """Mixup in Stage 2 (the reference's switch): all members share the mixed batch; it changes the result."""
    cfgs = [_cfg(mixup=True, mixup_alpha=0.5), _cfg(mixup=True, mixup_alpha=0.5, eps_1=0.2, dw_ratio=0.5)]
    grouped = train_stage2_group(tiny, stage1.model, cfgs, device=CPU, progress=False)
    for cfg, g in zip(cfgs, grouped):
        _assert_same(g, train_stage2(tiny, stage1.model, cfg, device=CPU, progress=False))
    plain = train_stage2(tiny, stage1.model, _cfg(), device=CPU, progress=False)
    assert not torch.allclose(grouped[0].model.classifier.linear.weight, plain.model.classifier.linear.weight)


def test_a_diverging_member_raises_naming_epoch_and_member(tiny: LTData, stage1: StageResult) -> None:
    cfgs = [_cfg(), _cfg(lr=1e30)]
    with pytest.raises(NonFiniteError, match=r"stage 2, epoch 1: training diverged for group member 1 of 2") as info:
        train_stage2_group(tiny, stage1.model, cfgs, device=CPU, progress=False)
    assert (info.value.stage, info.value.epoch, info.value.member) == (2, 1, 1)
    assert isinstance(info.value, FloatingPointError)
