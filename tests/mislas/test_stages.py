"""Stage 1 / Stage 2 behaviour: what trains, what stays frozen, schedules, resume, baselines."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from mislas.config import RunConfig, Stage1Config, Stage2Config, effective_shift_bn, smoke_config
from mislas.data import LTData
from mislas.errors import NonFiniteError, UsageError
from mislas.models import Network, ScaledClassifier, TauNormClassifier
from mislas.stages import (
    Mixup,
    cosine_factor,
    load_stage1,
    resolve_device,
    stage1_lr_factor,
    train_stage1,
    train_stage2,
)

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**stage2: object) -> RunConfig:
    return RunConfig(
        stage1=Stage1Config(arch="resnet32", epochs=2, lr=0.05, batch_size=16, weight_decay=5e-4, warmup_epochs=1,
                            milestones=(1,), mixup_alpha=1.0),
        stage2=replace(Stage2Config(epochs=3, lr=0.05, batch_size=16, eps_1=0.3, eps_k=0.1, dw_ratio=0.2), **stage2),
        seed=0, device="cpu", channels_last=False,
    )


@pytest.fixture(scope="module")
def stage1(tiny: LTData, tmp_path_factory: pytest.TempPathFactory):
    ckpt = tmp_path_factory.mktemp("s1")
    return train_stage1(tiny, _cfg(), device=CPU, checkpoint_dir=ckpt, progress=False), ckpt


def _split_params(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    body = model.body
    weights = {k: v.detach().clone() for k, v in body.named_parameters()}
    stats = {k: v.detach().clone() for k, v in body.named_buffers() if "running" in k}
    return weights, stats


def test_shift_bn_changes_bn_statistics_only(tiny: LTData, stage1) -> None:
    result, _ = stage1
    before_w, before_stats = _split_params(result.model)
    out = train_stage2(tiny, result.model, _cfg(shift_bn=True), device=CPU, progress=False)
    after_w, after_stats = _split_params(out.model)
    assert before_w.keys() == after_w.keys() and len(before_w) > 0
    for name in before_w:  # every conv and BN affine weight unchanged
        assert torch.equal(before_w[name], after_w[name]), name
    changed = [k for k in before_stats if not torch.equal(before_stats[k], after_stats[k])]
    assert len(changed) == len(before_stats), "every BN running statistic re-estimated"
    # the Stage-1 model itself is left untouched
    assert all(torch.equal(v, _split_params(result.model)[1][k]) for k, v in before_stats.items())


def test_without_shift_bn_backbone_is_unchanged(tiny: LTData, stage1) -> None:
    result, _ = stage1
    before = {k: v.clone() for k, v in result.model.body.state_dict().items()}
    out = train_stage2(tiny, result.model, _cfg(shift_bn=False), device=CPU, progress=False)
    after = out.model.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(out.model.classifier, ScaledClassifier)
    assert not torch.equal(out.model.classifier.linear.weight, result.model.classifier.weight)


def test_classifier_lr_is_ratio_times_lr_every_epoch(tiny: LTData, stage1) -> None:
    result, _ = stage1
    cfg = _cfg(dw_ratio=0.2, epochs=3)
    seen = []
    out = train_stage2(tiny, result.model, cfg, device=CPU, progress=False, on_epoch=seen.append)
    assert [r.epoch for r in out.epochs] == [1, 2, 3] and len(seen) == 3
    for r in out.epochs:
        expected = 0.5 * 0.05 * (1 + math.cos(math.pi * (r.epoch - 1) / 3))  # cosine, set per epoch
        assert r.lr == pytest.approx(expected)
        assert r.classifier_lr == pytest.approx(0.2 * r.lr)


@pytest.mark.parametrize(("method", "schedule", "shift"), [
    ("crt", None, 1), ("lws", None, 1),  # Kang et al.'s effective schedule by default: one epoch ahead
    ("crt", "cosine", 0), ("lws", "cosine", 0), ("mislas", "cosine_kang", 1),
])
def test_stage2_cosine_variant_per_method(tiny: LTData, stage1, method: str, schedule: str | None,
                                          shift: int) -> None:
    """cRT/LWS train epoch e of E at ½·lr·(1 + cos(πe/E)) (the last at 0), as Kang et al.'s
    run_networks.py under torch >= 1.1; ``stage2.lr_schedule`` selects either variant."""
    result, _ = stage1
    out = train_stage2(tiny, result.model, _cfg(method=method, epochs=4, lr_schedule=schedule), device=CPU,
                       progress=False)
    lrs = [r.lr for r in out.epochs]
    expected = [0.5 * 0.05 * (1 + math.cos(math.pi * (e - 1 + shift) / 4)) for e in (1, 2, 3, 4)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    if shift:
        assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_stage1_multistep_schedule_matches_method() -> None:
    cfg = Stage1Config(epochs=200, schedule="multistep", warmup_epochs=5, milestones=(160, 180))
    for e in range(1, 201):
        expected = e / 5 if e <= 5 else (1.0 if e <= 160 else 0.1 if e <= 180 else 0.01)
        assert stage1_lr_factor(cfg, e) == pytest.approx(expected), e
    cos = Stage1Config(epochs=90, schedule="cosine", warmup_epochs=0, milestones=())
    assert stage1_lr_factor(cos, 1) == 1.0
    assert stage1_lr_factor(cos, 46) == pytest.approx(0.5)
    assert cosine_factor(3, 4) == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)))


def test_stage1_resume_equals_uninterrupted(tiny: LTData, stage1, tmp_path) -> None:
    full, _ = stage1

    class Stop(Exception):
        pass

    def stop_after_first(record) -> None:
        if record.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train_stage1(tiny, _cfg(), device=CPU, checkpoint_dir=tmp_path, on_epoch=stop_after_first, progress=False)
    assert (tmp_path / "stage1.partial.pt").exists() and not (tmp_path / "stage1.pt").exists()
    resumed = train_stage1(tiny, _cfg(), device=CPU, checkpoint_dir=tmp_path, progress=False)
    assert [r.epoch for r in resumed.epochs] == [1, 2]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    assert (tmp_path / "stage1.pt").exists() and not (tmp_path / "stage1.partial.pt").exists()


def test_stage2_resume_equals_uninterrupted(tiny: LTData, stage1, tmp_path) -> None:
    result, _ = stage1
    cfg = _cfg(epochs=3)
    full = train_stage2(tiny, result.model, cfg, device=CPU, progress=False)

    def stop_at_two(record) -> None:
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stage2(tiny, result.model, cfg, device=CPU, checkpoint_dir=tmp_path, on_epoch=stop_at_two,
                     progress=False)
    resumed = train_stage2(tiny, result.model, cfg, device=CPU, checkpoint_dir=tmp_path, progress=False)
    assert [r.epoch for r in resumed.epochs] == [1, 2, 3]
    a, b = full.model.classifier.state_dict(), resumed.model.classifier.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed.test.acc == pytest.approx(full.test.acc)


def test_stage1_checkpoint_refuses_other_data(tiny: LTData, stage1) -> None:
    _, ckpt = stage1
    other = replace(tiny, fingerprint="0" * 64)
    with pytest.raises(UsageError, match="other data"):
        load_stage1(ckpt / "stage1.pt", other, _cfg(), CPU)
    with pytest.raises(UsageError, match="Stage-1 config"):
        load_stage1(ckpt / "stage1.pt", tiny, replace(_cfg(), stage1=replace(_cfg().stage1, lr=0.2)), CPU)


def test_lws_trains_only_the_scale(tiny: LTData, stage1) -> None:
    result, _ = stage1
    out = train_stage2(tiny, result.model, _cfg(method="lws"), device=CPU, progress=False)
    head = out.model.classifier
    assert isinstance(head, ScaledClassifier)
    assert torch.equal(head.linear.weight, result.model.classifier.weight)
    assert not torch.equal(head.scale, torch.ones_like(head.scale))
    assert np.allclose(out.weight_norms, (head.linear.weight * head.scale[:, None]).norm(dim=1).detach().numpy())


def test_crt_reinitialises_the_classifier(tiny: LTData, stage1) -> None:
    result, _ = stage1
    out = train_stage2(tiny, result.model, _cfg(method="crt", epochs=1), device=CPU, progress=False)
    assert isinstance(out.model.classifier, nn.Linear)
    assert not torch.equal(out.model.classifier.weight, result.model.classifier.weight)


def test_tau_norm_picks_tau_on_validation(tiny: LTData, stage1) -> None:
    result, _ = stage1
    out = train_stage2(tiny, result.model, _cfg(method="tau_norm"), device=CPU, progress=False)
    assert isinstance(out.model.classifier, TauNormClassifier)
    # independent: recompute val accuracy for every τ from features, pick the first best
    model = result.model.eval()
    x = (tiny.val.images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        feats = model.features(x)
    w = model.classifier.weight.detach()
    accs = [float(((feats @ (w / w.norm(dim=1, keepdim=True) ** t).T).argmax(1) == tiny.val.labels).float().mean())
            for t in _cfg().stage2.tau_grid]
    assert out.extras["tau"] == pytest.approx(_cfg().stage2.tau_grid[int(np.argmax(accs))])


def test_ce_is_stage1_alone(tiny: LTData, stage1) -> None:
    result, _ = stage1
    out = train_stage2(tiny, result.model, _cfg(method="ce"), device=CPU, progress=False)
    assert out.epochs == [] and out.test.acc == pytest.approx(result.test.acc)


def test_mixup_loss_equals_soft_target_cross_entropy() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    mix = Mixup(1.0, seed=3)
    xm, ya, yb, lam = mix(x, y)
    assert 0.0 <= lam <= 1.0
    # the partner of row i is the row j whose mix reproduces xm[i]
    dist = ((xm[:, None, :] - lam * x[:, None, :] - (1 - lam) * x[None, :, :]) ** 2).sum(-1)
    perm = dist.argmin(1)
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm], atol=1e-6)
    assert torch.equal(ya, y) and torch.equal(yb, y[perm]) and sorted(perm.tolist()) == list(range(8))
    logits = torch.randn(8, 4)
    soft = lam * nn.functional.one_hot(ya, 4) + (1 - lam) * nn.functional.one_hot(yb, 4)
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    got = lam * nn.functional.cross_entropy(logits, ya) + (1 - lam) * nn.functional.cross_entropy(logits, yb)
    assert torch.allclose(got, expected, atol=1e-6)


def test_smoke_preset_keeps_paper_stage2_knobs() -> None:
    cfg = smoke_config("cifar100_lt", 100)
    assert (cfg.stage2.eps_1, cfg.stage2.eps_k, cfg.stage2.dw_ratio) == (0.4, 0.1, 0.2)
    assert cfg.stage1.epochs < 200 and cfg.stage2.epochs < 10


@pytest.mark.parametrize("method", ["crt", "lws"])
def test_baselines_shift_bn_by_default_as_kang_et_al(tiny: LTData, stage1, method: str) -> None:
    """cRT / LWS run the frozen backbone in train mode by default (Kang et al.'s model.train()), so BN
    statistics re-estimate; shift_bn=False keeps them; the conv and BN affine weights never change."""
    result, _ = stage1
    before_w, before_stats = _split_params(result.model)
    assert effective_shift_bn(_cfg(method=method)) is True
    shifted = train_stage2(tiny, result.model, _cfg(method=method, epochs=1), device=CPU, progress=False)
    kept = train_stage2(tiny, result.model, _cfg(method=method, epochs=1, shift_bn=False), device=CPU, progress=False)
    for out, changes in ((shifted, True), (kept, False)):
        after_w, after_stats = _split_params(out.model)
        assert all(torch.equal(before_w[k], after_w[k]) for k in before_w)
        moved = [k for k in before_stats if not torch.equal(before_stats[k], after_stats[k])]
        assert len(moved) == (len(before_stats) if changes else 0), method
        assert out.extras["shift_bn"] is changes


def test_effective_shift_bn_by_method() -> None:
    assert [effective_shift_bn(_cfg(method=m)) for m in ("mislas", "crt", "lws", "ce", "tau_norm")] == [
        True, True, True, False, False]
    assert effective_shift_bn(_cfg(shift_bn=False)) is False
    assert effective_shift_bn(_cfg(method="ce", shift_bn=True)) is False  # no Stage-2 training, no shift


def test_non_finite_training_raises_a_typed_error_naming_the_epoch(tiny: LTData, stage1) -> None:
    result, _ = stage1
    poisoned = copy.deepcopy(result.model)
    with torch.no_grad():
        poisoned.classifier.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^stage 2, epoch 1: training diverged \(mean training loss nan\)$") as info:
        train_stage2(tiny, poisoned, _cfg(), device=CPU, progress=False)
    assert (info.value.stage, info.value.epoch, info.value.member) == (2, 1, None)


def test_mislas_on_a_plain_stage1_with_stage2_mixup(tiny: LTData) -> None:
    """The ablation cells: MiSLAS's Stage 2 on a Stage 1 without mixup, and mixup in Stage 2."""
    cfg = _cfg(mixup=True, mixup_alpha=0.4, epochs=1)
    cfg = replace(cfg, stage1=replace(cfg.stage1, mixup=False, epochs=1))
    s1 = train_stage1(tiny, cfg, device=CPU, progress=False)
    out = train_stage2(tiny, s1.model, cfg, device=CPU, progress=False)
    assert len(out.epochs) == 1 and math.isfinite(out.epochs[0].train_loss)
    assert out.epochs[0].steps == math.ceil(sum(tiny.class_counts) / 16) + 1


def test_resolve_device_refuses_in_one_line() -> None:
    assert resolve_device("cpu") == CPU
    with pytest.raises(UsageError, match="device must be one of auto, cpu, cuda, cuda:N, mps, got 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA, which is not available"):
            resolve_device("cuda")


def test_shift_bn_leaves_a_frozen_trunk_in_eval_mode(tiny: LTData, stage1) -> None:
    """Places-LT: the pretrained trunk stays in eval mode; shift BN re-estimates the body's BN only."""
    result, _ = stage1
    model = Network(copy.deepcopy(result.model.body), result.model.feature_dim, tiny.num_classes,
                    trunk=nn.BatchNorm2d(1).eval())
    model.classifier = copy.deepcopy(result.model.classifier)
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    body_before = {k: v.clone() for k, v in model.body.state_dict().items() if "running" in k}
    out = train_stage2(tiny, model, _cfg(epochs=1), device=CPU, progress=False)
    assert all(torch.equal(trunk_before[k], v) for k, v in out.model.trunk.state_dict().items())
    body_after = out.model.body.state_dict()
    assert all(not torch.equal(body_before[k], body_after[k]) for k in body_before)
