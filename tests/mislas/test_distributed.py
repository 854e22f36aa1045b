"""Data-parallel Stage 1: the epoch's shards, and a DDP step checked against one process.

The two-process test runs a real gloo process group (torch.multiprocessing, 127.0.0.1 via a
file store in tmp_path); Ray Train's launch of the same code is tested in tests/study.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DistributedSampler

from mislas.data.loaders import Shard, make_loader
from mislas.data.types import ArraySplit
from mislas.distributed import broadcast, current_shard, data_parallel, weighted_means
from mislas.models import Network
from mislas.safe_load import load_torch_file
from mislas.stages import Mixup, run_epoch


@pytest.mark.parametrize(("n", "world"), [(10, 3), (12, 4), (7, 2), (5, 5), (3, 4)])
def test_shards_are_torch_distributed_samplers_split(n: int, world: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    for rank in range(world):
        # torch's DistributedSampler (no shuffle) over positions 0..n-1, padded by repeating the start
        positions = list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))
        assert Shard(rank, world).take(order).tolist() == order[positions].tolist()
        assert Shard(rank, world).length(n) == len(positions)
    covered = torch.cat([Shard(r, world).take(order) for r in range(world)])
    assert set(covered.tolist()) == set(range(n))


def test_a_bad_shard_is_refused() -> None:
    with pytest.raises(Exception, match="0 <= rank < world"):
        Shard(2, 2)


def test_the_loader_shards_the_global_epoch_with_its_augmentation_seeds() -> None:
    labels = torch.arange(10) % 3
    split = ArraySplit(torch.zeros(10, 4, 4, 1, dtype=torch.uint8), labels)

    def items(shard: Shard) -> list[tuple[int, int]]:
        loader = make_loader(split, None, batch_size=10, sampler="instance", num_classes=3,
                             generator=torch.Generator().manual_seed(5), shard=shard)
        return list(iter(loader.sampler))  # (index, augmentation seed) pairs

    whole = items(Shard())
    parts = [items(Shard(r, 2)) for r in range(2)]
    assert parts[0] == whole[0::2] and parts[1] == whole[1::2]


def test_mixup_streams_differ_by_rank_and_rank_0_is_the_single_process_draw() -> None:
    x, y = torch.arange(8.0).reshape(8, 1), torch.arange(8)
    a, b, c = Mixup(1.0, 3)(x, y), Mixup(1.0, 3, stream=0)(x, y), Mixup(1.0, 3, stream=1)(x, y)
    assert a[3] == b[3] and torch.equal(a[2], b[2])
    assert a[3] != c[3]


def _net() -> Network:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU())  # no BN: a DDP step equals one process's
    return Network(body, 5, 3)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]


def _train(model: Network, batches: list[tuple[torch.Tensor, torch.Tensor]], parallel: nn.Module | None) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    stats = run_epoch(model, batches, loss_fn=nn.functional.cross_entropy, optimizer=opt, device=torch.device("cpu"),
                      train_backbone=True, backbone_bn_train=True, parallel=parallel)
    return stats.loss


def _rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        shard = current_shard()
        model = _net()
        mine = [(x[shard.rank :: shard.world], y[shard.rank :: shard.world]) for x, y in _batches()]
        loss = _train(model, mine, data_parallel(model, torch.device("cpu")))
        means, count = weighted_means([loss * 4 * len(mine)], 4 * len(mine), torch.device("cpu"))
        said = broadcast(f"from rank {rank}")
        if rank == 1:
            torch.save({"state": model.state_dict(), "loss": means[0], "count": count, "said": said,
                        "shard": (shard.rank, shard.world)}, out)
    finally:
        dist.destroy_process_group()


def test_a_two_process_ddp_epoch_equals_one_process_on_the_same_global_batches(tmp_path: Path) -> None:
    out = tmp_path / "rank1.pt"
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    got = load_torch_file(out)
    model = _net()
    loss = _train(model, _batches(), None)
    assert got["shard"] == (1, 2) and got["said"] == "from rank 0" and got["count"] == 24
    for name, value in model.state_dict().items():  # rank 1's weights after DDP == one process's
        torch.testing.assert_close(got["state"][name], value, rtol=1e-5, atol=1e-6)
    # the per-rank means averaged over ranks: the global mean of each batch's mean loss
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert current_shard() == Shard() and broadcast(7) == 7  # outside a group: the identity


FMNIST = Path("/usr/share/datasets/fashion-mnist")
# A Stage 1 that learns in a few seconds: Fashion-MNIST-LT (β 100, n_max 200), no mixup, 4 epochs
RECIPE = [f"data.data_root={FMNIST}", "data.n_max=200", "data.val_per_class=50", "stage1.epochs=4",
          "stage1.warmup_epochs=1", "stage1.milestones=(3)", "stage1.lr=0.05", "stage1.mixup=false",
          "stage1.batch_size=64"]


def _stage1(rank: int, world: int, store: str, out: str) -> None:
    from mislas.config import apply_overrides, preset_config
    from mislas.stages import evaluate_split, fit_stage1
    from mislas.train import load_data

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        cfg = apply_overrides(preset_config("smoke", "fashion_mnist_lt"), RECIPE)
        data = load_data(cfg)
        model, records = fit_stage1(data, cfg, device=torch.device("cpu"), progress=False)
        if rank == 0:
            acc = evaluate_split(model, data, "val", cfg, torch.device("cpu")).summary()["acc"]
            torch.save({"acc": acc, "losses": [r.train_loss for r in records], "steps": records[-1].steps}, out)
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's fashion-mnist")
def test_one_and_two_worker_stage1_reach_comparable_accuracy(tmp_path: Path) -> None:
    """The same recipe (global batch 64, lr 0.05) on 1 process and on 2 gloo ranks (32 each)."""
    threads = torch.get_num_threads()
    try:
        _stage1(0, 1, "", str(tmp_path / "one.pt"))
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_stage1, args=(2, str(tmp_path / "store"), str(tmp_path / "two.pt")), nprocs=2, join=True)
    one, two = load_torch_file(tmp_path / "one.pt"), load_torch_file(tmp_path / "two.pt")
    assert one["steps"] == two["steps"] == 8  # ceil(492 / 64): each rank runs every step on half the batch
    # 10 balanced val classes: chance is 10 %; measured 21.4 % (1 worker) and 26.0 % (2 workers)
    assert one["acc"] >= 18 and two["acc"] >= 18 and abs(one["acc"] - two["acc"]) <= 10
    assert two["losses"][-1] == pytest.approx(one["losses"][-1], rel=0.25) and two["losses"][-1] < two["losses"][0]
