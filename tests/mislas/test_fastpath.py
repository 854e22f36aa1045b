"""The device-resident fast path (mislas.fastpath) against the torchvision / DataLoader path.

What must hold: an un-augmented batch equals the torchvision eval transform bit for bit; the
crop offsets and flips have the distribution of ``v2.RandomCrop(padding=4)`` +
``v2.RandomHorizontalFlip``; both paths draw the same order from the same generator; and a
training run gives the same model through either path when augmentation is off. Plus the
DataLoader tuning: ``num_workers="auto"`` and batches that do not depend on the worker count.
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

import mislas.data.batches as batches
import mislas.fastpath as fastpath
import mislas.stages as stages
from mislas.config import DataConfig, RunConfig, Stage1Config, Stage2Config, apply_overrides
from mislas.data import (
    ArraySplit,
    FileListSplit,
    LTData,
    as_torch_dataset,
    eval_transform,
    make_loader,
    train_transform,
)
from mislas.data.loaders import resolve_num_workers
from mislas.data.samplers import ClassAwareEpochs
from mislas.errors import UsageError
from mislas.fastpath import CropFlip, DeviceBatches

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def _data(counts: list[int], size: int, channels: int, seed: int = 0) -> LTData:
    """Random uint8 images (all distinct), labels by class block; the same split for train/val/test."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), size, size, channels), generator=g, dtype=torch.uint8)
    split = ArraySplit(images, labels)
    mean, std = (0.4914, 0.4822, 0.4465)[:channels], (0.2470, 0.2435, 0.2616)[:channels]
    return LTData(name="t", num_classes=len(counts), train=split, val=split, test=split, class_counts=tuple(counts),
                  image_size=size, in_channels=channels, mean=mean, std=std, fingerprint="0" * 64)


@pytest.mark.parametrize(("channels", "channels_last"), [(3, True), (3, False), (1, True)])
def test_eval_batches_equal_torchvision_eval_transform(channels: int, channels_last: bool) -> None:
    data = _data([20, 12, 5], size=32, channels=channels)
    batches = list(fastpath.eval_batches(data, "test", device=CPU, batch_size=16, channels_last=channels_last))
    assert [x.shape[0] for x, _ in batches] == [16, 16, 5]
    for x, _ in batches:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=fmt)
    got = torch.cat([x for x, _ in batches])
    ds = as_torch_dataset(data.test, eval_transform(data))
    expected = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(got, expected)  # bit for bit, not approximately
    assert torch.equal(torch.cat([y for _, y in batches]), data.test.labels)


def _unique_image(size: int = 8) -> torch.Tensor:
    """uint8 [size, size, 3] with every value distinct and non-zero (zero is the padding)."""
    return (torch.arange(size * size * 3) + 1).to(torch.uint8).reshape(size, size, 3)


def _chi2_bound(dof: int, z: float = 4.5) -> float:
    """Upper tail quantile of chi-square(dof) at z standard deviations (Wilson–Hilferty), ~p = 3e-6."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * math.sqrt(c)) ** 3


def _chi2(counts: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def test_crop_and_flip_distribution_matches_torchvision_v2() -> None:
    size, pad, copies, epochs = 8, 4, 512, 8
    img = _unique_image(size)
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3), v2.ToPureTensor()])
    # every possible outcome, computed independently: pad, slice, maybe flip, normalise
    padded = F.pad(img.permute(2, 0, 1), (pad, pad, pad, pad))
    table: dict[bytes, int] = {}
    cell = 0
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            for flip in (False, True):
                crop = padded[:, dy : dy + size, dx : dx + size]
                crop = crop.flip(-1) if flip else crop
                table[norm(tv_tensors.Image(crop.contiguous())).numpy().tobytes()] = cell
                cell += 1
    cells = len(table)
    assert cells == (2 * pad + 1) ** 2 * 2  # all outcomes distinguishable

    split = ArraySplit(img.expand(copies, -1, -1, -1).contiguous(), torch.zeros(copies, dtype=torch.int64))
    gen = torch.Generator()
    batches = DeviceBatches(split, mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=128, device=CPU, sampler="instance",
                            generator=gen, augment=CropFlip(pad=pad), channels_last=False)
    fast = torch.zeros(cells)
    for epoch in range(epochs):
        gen.manual_seed(100 + epoch)
        for x, _ in batches:
            for row in x:
                fast[table[row.numpy().tobytes()]] += 1  # KeyError: a pixel that no crop+flip gives

    torch.manual_seed(0)
    aug = v2.Compose([v2.RandomCrop(size, padding=pad), v2.RandomHorizontalFlip(), norm])
    reference = torch.zeros(cells)
    for _ in range(copies * epochs):
        reference[table[aug(tv_tensors.Image(img.permute(2, 0, 1).contiguous())).numpy().tobytes()]] += 1

    n = copies * epochs
    for counts in (fast, reference):
        assert int(counts.sum()) == n and bool((counts > 0).all())  # every offset and flip is reachable
        assert _chi2(counts, torch.full((cells,), n / cells)) < _chi2_bound(cells - 1)  # uniform over 162
        flips = counts.reshape(-1, 2)[:, 1].sum() / n
        assert abs(float(flips) - 0.5) < 4.5 * math.sqrt(0.25 / n)
        rows = counts.reshape(2 * pad + 1, -1).sum(1)  # the row offset alone: uniform over 0..8
        assert _chi2(rows, torch.full((2 * pad + 1,), n / (2 * pad + 1))) < _chi2_bound(2 * pad)
    # the two samples come from one distribution (chi-square test of homogeneity)
    pooled = (fast + reference) / 2
    assert _chi2(fast, pooled) + _chi2(reference, pooled) < _chi2_bound(cells - 1)


@pytest.mark.parametrize("kind", ["instance", "class_aware"])
def test_same_order_as_the_dataloader_path(kind: str) -> None:
    data = _data([30, 9, 4], size=6, channels=3, seed=1)
    g_torch, g_fast = torch.Generator(), torch.Generator()
    loader = make_loader(data.train, eval_transform(data), batch_size=7, sampler=kind, num_classes=3,
                         generator=g_torch, samples_per_class=3)
    fast = DeviceBatches(data.train, mean=data.mean, std=data.std, batch_size=7, device=CPU, sampler=kind,
                         generator=g_fast, num_classes=3, samples_per_class=3, channels_last=False)
    assert len(fast) == len(loader)
    for epoch_seed in (11, 12):
        g_torch.manual_seed(epoch_seed)
        g_fast.manual_seed(epoch_seed)
        pairs = list(zip(loader, fast, strict=True))
        for (xt, yt), (xf, yf) in pairs:
            assert torch.equal(xt, xf) and torch.equal(yt, yf)
    if kind == "class_aware":  # runs of 3 from one class, every class equally often
        labels = torch.cat([yf for _, (_, yf) in pairs])
        assert labels.numel() == 3 * 30 and torch.equal(torch.bincount(labels), torch.tensor([30, 30, 30]))
        assert bool((labels.reshape(-1, 3) == labels.reshape(-1, 3)[:, :1]).all())


def test_augmented_batches_depend_on_the_epoch_seed_alone() -> None:
    data = _data([40, 10], size=8, channels=3, seed=2)
    gen = torch.Generator()
    batches = fastpath.train_batches(data, device=CPU, sampler="instance", batch_size=16, generator=gen)

    def epoch(seed: int) -> list[torch.Tensor]:
        gen.manual_seed(seed)
        return [x for x, _ in batches]

    first, other, again = epoch(5), epoch(6), epoch(5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert first[0].is_contiguous(memory_format=torch.channels_last)


def _tiny_cfg(loader: str) -> RunConfig:
    return RunConfig(
        data=DataConfig(loader=loader, num_workers=0),
        stage1=Stage1Config(arch="resnet32", epochs=2, lr=0.05, batch_size=16, warmup_epochs=1, milestones=(1,)),
        stage2=Stage2Config(epochs=2, lr=0.05, batch_size=16, eps_1=0.3, eps_k=0.1, dw_ratio=0.2, shift_bn=True),
        seed=0, device="cpu", channels_last=True,
    )


def test_training_is_the_same_through_either_path_without_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The method's math is unchanged: with augmentation off, fast path and DataLoader path agree."""
    monkeypatch.setattr(batches, "train_transform", eval_transform)
    monkeypatch.setattr(fastpath, "train_augmentation", lambda data: None)
    data = _data([40, 16, 6], size=12, channels=1, seed=3)
    results = {}
    for loader in ("torch", "auto"):
        cfg = _tiny_cfg(loader)
        s1 = stages.train_stage1(data, cfg, device=CPU, progress=False)
        s2 = stages.train_stage2(data, s1.model, cfg, device=CPU, progress=False)
        results[loader] = (s1, s2)
    (t1, t2), (f1, f2) = results["torch"], results["auto"]
    for (k, a), b in zip(t1.model.state_dict().items(), f1.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), k
    assert [r.train_loss for r in t1.epochs] == pytest.approx([r.train_loss for r in f1.epochs], rel=1e-6)
    for (k, a), b in zip(t2.model.classifier.state_dict().items(), f2.model.classifier.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), k
    assert t2.test.acc == pytest.approx(f2.test.acc) and t2.test.nll == pytest.approx(f2.test.nll, rel=1e-5)


def test_stage2_fast_path_is_used_and_keeps_data_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data([20, 6], size=8, channels=3)
    made = []
    real = fastpath.DeviceBatches

    def spy(*args: object, **kwargs: object) -> DeviceBatches:
        made.append(kwargs.get("sampler"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fastpath, "DeviceBatches", spy)
    cfg = replace(_tiny_cfg("auto"), stage1=replace(_tiny_cfg("auto").stage1, epochs=1))
    s1 = stages.train_stage1(data, cfg, device=CPU, progress=False)
    stages.train_stage2(data, s1.model, replace(cfg, stage2=replace(cfg.stage2, epochs=1)), device=CPU, progress=False)
    epochs = [m for m in made if isinstance(m, ClassAwareEpochs)]  # Stage 2's class-aware epochs
    assert made.count("instance") == 1 and len(epochs) == 1 and made.count("sequential") >= 3
    with pytest.raises(UsageError, match="in-memory"):
        fastpath.selected(FileListSplit(Path("."), ("a.jpg",), torch.zeros(1, dtype=torch.int64), Path("l.txt")),
                          "fast")


@pytest.mark.parametrize("loader", ["torch", "auto"])
def test_stage2_epoch_length_holds_on_both_paths(loader: str) -> None:
    """Optimizer steps per Stage-2 epoch, DataLoader and fast path: the reference's ceil(N/B) + 1 by
    default, the sampler's K * n_max / B with "sampler", exactly S with an integer S."""
    counts = [37, 11, 5]
    data = _data(counts, size=8, channels=3, seed=5)
    cfg = _tiny_cfg(loader)
    s1 = stages.train_stage1(data, replace(cfg, stage1=replace(cfg.stage1, epochs=1)), device=CPU, progress=False)
    n, b = sum(counts), cfg.stage2.batch_size
    expected = {"reference": math.ceil(n / b) + 1, "sampler": math.ceil(3 * 37 / b), 3: 3}
    assert expected["reference"] < expected["sampler"]  # 5 vs 7: the two rules differ here
    for length, steps in expected.items():
        s2 = replace(cfg.stage2, epochs=2, epoch_length=length)
        out = stages.train_stage2(data, s1.model, replace(cfg, stage2=s2), device=CPU, progress=False)
        assert [r.steps for r in out.epochs] == [steps, steps], (loader, length)


def test_loader_batches_do_not_depend_on_workers_or_history() -> None:
    """Epoch 2 of a persistent-worker loader = a fresh in-process loader seeded for epoch 2 (resume)."""
    data = _data([24, 8], size=8, channels=3, seed=4)

    def epochs(num_workers: int, seeds: list[int]) -> list[torch.Tensor]:
        g = torch.Generator()
        ld = make_loader(data.train, train_transform(data), batch_size=8, sampler="class_aware", num_classes=2,
                         generator=g, num_workers=num_workers)
        out = []
        for s in seeds:
            g.manual_seed(s)
            out.append(torch.cat([x for x, _ in ld]))
        return out

    with_worker = epochs(1, [1, 2])
    resumed = epochs(0, [2])
    assert torch.equal(with_worker[1], resumed[0])
    assert not torch.equal(with_worker[0], with_worker[1])


def test_num_workers_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("MISLAS_NUM_CPUS", raising=False)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert resolve_num_workers("auto") == max(len(os.sched_getaffinity(0)) - 1, 0)
    monkeypatch.setenv("MISLAS_NUM_CPUS", "3")
    assert resolve_num_workers("auto") == 2
    monkeypatch.delenv("MISLAS_NUM_CPUS")
    # inside a Ray trial: the CPUs Ray assigned to it
    ctx = types.SimpleNamespace(get_assigned_resources=lambda: {"CPU": 5.0, "GPU": 1.0})
    fake_ray = types.SimpleNamespace(is_initialized=lambda: True, get_runtime_context=lambda: ctx)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    assert resolve_num_workers("auto") == 4
    assert resolve_num_workers(0) == 0 and resolve_num_workers(3) == 3
    with pytest.raises(UsageError, match="num_workers"):
        resolve_num_workers(-1)


def test_config_fields() -> None:
    cfg = RunConfig()
    assert cfg.data.loader == "auto" and cfg.data.num_workers == "auto"
    assert apply_overrides(cfg, ["data.num_workers=3"]).data.num_workers == 3
    assert apply_overrides(cfg, ["data.num_workers=auto", "data.loader=torch"]).data.loader == "torch"
    with pytest.raises(UsageError, match="data.loader"):
        apply_overrides(cfg, ["data.loader=gpu"])
    with pytest.raises(UsageError, match="data.num_workers"):
        apply_overrides(cfg, ["data.num_workers=many"])
