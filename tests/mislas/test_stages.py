"""Stage 1 / Stage 2 behaviour: what trains, what stays frozen, schedules, resume, baselines."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from mislas.config import RunConfig, Stage1Config, Stage2Config, smoke_config
from mislas.data import LTData
from mislas.errors import UsageError
from mislas.models import ScaledClassifier, TauNormClassifier
from mislas.stages import (
    Mixup,
    cosine_factor,
    load_stage1,
    stage1_lr_factor,
    train_stage1,
    train_stage2,
)

CPU = torch.device("cpu")


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
