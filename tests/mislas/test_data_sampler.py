"""ClassAwareSampler (method.md, Stage 2) and make_loader's sampling rules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mislas.data import ClassAwareSampler, eval_transform, load_dataset, make_loader, train_transform
from mislas.data.samplers import ClassAwareEpochs, class_aware_epoch_samples, class_aware_epoch_steps
from mislas.errors import UsageError

COUNTS = [52, 20, 7, 3, 1]  # a long tail with a one-image class; epoch 5 * 52 = 65 runs of 4


def _labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    lab = np.repeat(np.arange(len(counts)), counts)
    return torch.from_numpy(np.random.default_rng(seed).permutation(lab))


def _sampler(seed: int, spc: int = 4, counts: list[int] = COUNTS) -> ClassAwareSampler:
    return ClassAwareSampler(
        _labels(counts), len(counts), samples_per_class=spc, generator=torch.Generator().manual_seed(seed)
    )


def test_epoch_length_and_balance() -> None:
    s = _sampler(0)
    idx = list(s)
    assert len(s) == len(idx) == len(COUNTS) * max(COUNTS)
    drawn = _labels(COUNTS)[idx].numpy()
    per_class = np.bincount(drawn, minlength=len(COUNTS))
    assert np.all(np.abs(per_class - max(COUNTS)) <= s.samples_per_class), per_class


def test_runs_of_samples_per_class_and_class_cycle() -> None:
    s = _sampler(1)
    labels = _labels(COUNTS)
    for epoch in range(3):
        runs = labels[list(s)].numpy().reshape(-1, 4)
        assert np.all(runs == runs[:, :1]), f"epoch {epoch}: a run mixes classes"
    # The class of each run follows a shuffled cycle: each block of K runs is a permutation of the classes.
    s = _sampler(2)
    classes = labels[list(s)].numpy()[::4]
    k = len(COUNTS)
    for block in range(len(classes) // k):
        assert sorted(classes[block * k : (block + 1) * k].tolist()) == list(range(k))


def test_each_class_cycles_through_its_images() -> None:
    """Within a class, every image is drawn once before any is drawn again (a shuffled cycle)."""
    s = _sampler(3)
    labels = _labels(COUNTS)
    idx = np.array(list(s) + list(s))
    for c, n in enumerate(COUNTS):
        mine = idx[labels[idx].numpy() == c]
        for start in range(0, len(mine) - n + 1, n):
            assert sorted(mine[start : start + n].tolist()) == sorted(np.flatnonzero(labels.numpy() == c).tolist())


def test_deterministic_and_continuing() -> None:
    a, b, c = _sampler(7), _sampler(7), _sampler(8)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    assert list(c) != first_a
    second_a = list(a)
    assert second_a != first_a  # the cycles continue, they do not restart
    assert second_a == list(b)


def test_partial_last_run_and_spc_one() -> None:
    s = _sampler(0, spc=3, counts=[5, 2])  # epoch 10, runs of 3: the fourth run is cut to 1
    labels = _labels([5, 2])
    for _ in range(3):
        runs = labels[list(s)].tolist()
        assert len(runs) == 10 and len(set(runs[:3])) == len(set(runs[3:6])) == len(set(runs[6:9])) == 1
    s1 = _sampler(0, spc=1)
    assert np.bincount(_labels(COUNTS)[list(s1)].numpy()).tolist() == [52] * 5


@pytest.mark.parametrize(
    ("labels", "k", "spc", "match"),
    [([0, 1, 1], 3, 4, "class-aware"), ([0, 5], 3, 4, "0..2"), ([0, 1], 2, 0, "samples_per_class")],
)
def test_bad_input(labels: list[int], k: int, spc: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClassAwareSampler(labels, k, samples_per_class=spc)


def test_make_loader_samplers(cifar10_root: Path) -> None:
    data = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10, val_per_class=5)
    k = data.num_classes

    def loader(kind: str, seed: int = 0, bs: int = 8):  # type: ignore[no-untyped-def]
        return make_loader(data.train, train_transform(data), batch_size=bs, sampler=kind, num_classes=k,
                           generator=torch.Generator().manual_seed(seed))  # fmt: skip

    inst = [y for _, y in loader("instance")]
    assert sorted(torch.cat(inst).tolist()) == sorted(data.train.labels.tolist())
    assert torch.equal(torch.cat(inst), torch.cat([y for _, y in loader("instance")]))
    ca = loader("class_aware")
    assert len(ca.sampler) == k * max(data.class_counts)  # type: ignore[arg-type]
    x, y = next(iter(ca))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert torch.all(y[:4] == y[0]) and torch.all(y[4:] == y[4])
    seq = make_loader(data.test, eval_transform(data), batch_size=64, sampler="sequential", num_classes=k,
                      generator=torch.Generator())  # fmt: skip
    assert torch.equal(torch.cat([y for _, y in seq]), data.test.labels)
    with pytest.raises(UsageError, match="unknown sampler 'balanced'"):
        loader("balanced")


def test_make_loader_with_workers(cifar10_root: Path) -> None:
    """Workers get their seed from the generator: two loaders with the same seed augment alike."""
    data = load_dataset("cifar10_lt", cifar10_root, n_max=20, imb_factor=10, val_per_class=5)

    def batch() -> torch.Tensor:
        ld = make_loader(data.train, train_transform(data), batch_size=16, sampler="instance",
                         num_classes=10, generator=torch.Generator().manual_seed(5), num_workers=1)  # fmt: skip
        return next(iter(ld))[0]

    assert torch.equal(batch(), batch())


# --- Stage 2's epochs: continuing cycles, set length, resumable --------------------------------

def _epochs(seed: int = 3, per_epoch: int = 24) -> ClassAwareEpochs:
    return ClassAwareEpochs(_labels(COUNTS), len(COUNTS), seed=seed, samples_per_class=4, samples_per_epoch=per_epoch)


def test_class_aware_epochs_continue_the_cycles_across_epochs() -> None:
    """As the reference's sampler (its cycles live on the sampler): epochs shorter than the head class's
    count walk through it without repeats, where restarting each epoch would redraw from a fresh cycle."""
    labels = _labels(COUNTS).numpy()
    epochs = _epochs(per_epoch=24)  # 6 runs of 4 per epoch; 52 images in class 0
    drawn = []
    for e in range(1, 17):  # 16 x 6 runs: >= 19 runs (76 draws) of class 0
        epochs.set_epoch(e)
        idx = epochs.indices()
        assert idx.shape == (24,) and np.all(labels[idx].reshape(-1, 4) == labels[idx].reshape(-1, 4)[:, :1])
        drawn.append(idx)
    stream = np.concatenate(drawn)
    head = stream[labels[stream] == 0]
    assert head.size >= 52
    assert sorted(head[:52].tolist()) == np.flatnonzero(labels == 0).tolist()  # one full cycle, no repeat
    # the class of each run follows one shuffled cycle over the classes across epoch boundaries
    classes = labels[stream][::4]
    k = len(COUNTS)
    for block in range(len(classes) // k):
        assert sorted(classes[block * k : (block + 1) * k].tolist()) == list(range(k))


def test_class_aware_epochs_are_a_function_of_seed_and_epoch() -> None:
    """A resumed run (a fresh object asked for epoch 3) draws what an uninterrupted run draws."""
    run = _epochs()
    seq = []
    for e in (1, 2, 3, 4):
        run.set_epoch(e)
        seq.append(run.indices().copy())
    fresh = _epochs()
    fresh.set_epoch(3)
    assert np.array_equal(fresh.indices(), seq[2])
    fresh.set_epoch(4)
    assert np.array_equal(fresh.indices(), seq[3])
    run.set_epoch(2)  # going back replays from the seed
    assert np.array_equal(run.indices(), seq[1])
    assert not np.array_equal(seq[0], seq[1])
    assert not np.array_equal(_epochs(seed=4).indices(), seq[0])
    with pytest.raises(ValueError, match="epoch >= 1"):
        run.set_epoch(0)


def test_epoch_length_rules() -> None:
    """Steps per Stage-2 epoch, computed independently from N, B, K and n_max."""
    cifar = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT β=100 (method.md)
    assert sum(cifar) == 12406
    assert class_aware_epoch_steps("reference", cifar, 128) == math.ceil(12406 / 128) + 1 == 98
    assert class_aware_epoch_steps("sampler", cifar, 128) == math.ceil(10 * 5000 / 128) == 391
    places = [4980] + [5] * 364
    places[1:] = [5 + (57520 - 5 * 364) // 364] * 364
    places[1] += 62500 - sum(places)  # 365 classes, N = 62,500, n_max = 4980 as Places-LT
    assert len(places) == 365 and sum(places) == 62500 and max(places) == 4980
    assert class_aware_epoch_steps("reference", places, 256) == math.ceil(62500 / 256) + 1 == 246
    assert class_aware_epoch_steps("sampler", places, 256) == math.ceil(365 * 4980 / 256) == 7101
    assert class_aware_epoch_samples(7, cifar, 128) == 7 * 128
    # balanced data: the sampler's epoch (K * n_max = N) ends before ceil(N/B) + 1 batches, as the reference's loop
    assert class_aware_epoch_samples("reference", [10, 10, 10], 8) == 30
    with pytest.raises(ValueError, match="epoch_length"):
        class_aware_epoch_samples(0, cifar, 128)
