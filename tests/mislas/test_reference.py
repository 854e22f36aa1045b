"""Reading the reference implementation's checkpoints: key layouts, logits, class order, bad files.

Files are written here in the reference's layout (train_stage1.py / train_stage2.py
``save_checkpoint``: ``state_dict_model``, ``state_dict_classifier``, ``state_dict_block``,
``state_dict_lws_model``, DataParallel's ``module.`` prefix) with random weights, and the
expected logits come from computations written here: a hand-written forward of the
reference's CIFAR ResNet-32, and torchvision modules for ResNet-50 and Places' ResNet-152.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.models.resnet import Bottleneck

from mislas.config import RunConfig, Stage1Config
from mislas.data import ArraySplit, FileListSplit, LTData
from mislas.errors import UsageError
from mislas.models import ScaledClassifier, build_model
from mislas.reference import (
    load_any_stage1,
    load_reference_checkpoint,
    load_reference_into,
    read_reference_checkpoint,
    reference_class_map,
    reference_class_order,
)
from mislas.stages import train_stage1
from tests.mislas.reference_files import State, ref_resnet32_logits, ref_resnet32_state, save_reference

CPU = torch.device("cpu")


# --- the reference's layouts, restated -------------------------------------------------------

def _randomise_bn(module: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so an eval-mode forward depends on every buffer."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


# --- ResNet-32 (CIFAR) ------------------------------------------------------------------------

def test_resnet32_stage2_file_gives_the_reference_logits(tmp_path: Path) -> None:
    model, classifier = ref_resnet32_state(10, seed=0)
    scale = 0.5 + torch.rand(10, generator=torch.Generator().manual_seed(1))
    path = save_reference(tmp_path / "model_best.pth.tar", model, classifier, scale=scale)
    net = load_reference_checkpoint(path, "resnet32", 10)
    assert not net.training and isinstance(net.classifier, ScaledClassifier)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = net(x)
    expected = ref_resnet32_logits(model, classifier, x, scale)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert torch.equal(net.classifier.scale, scale)


def test_resnet32_stage1_file_without_prefix_or_step_counters(tmp_path: Path) -> None:
    model, classifier = ref_resnet32_state(5, seed=3)
    model = {k: v for k, v in model.items() if not k.endswith("num_batches_tracked")}  # older torch wrote none
    path = save_reference(tmp_path / "current.pth.tar", model, classifier, prefix=False)  # single-GPU run
    net = load_reference_checkpoint(path, "resnet32", 5)
    assert type(net.classifier) is nn.Linear
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(net(x), ref_resnet32_logits(model, classifier, x), atol=1e-4, rtol=1e-4)


# --- ResNet-50 (ImageNet-LT, iNat) and ResNet-152 (Places-LT) --------------------------------

@pytest.fixture(scope="module")
def resnet50() -> tuple[nn.Module, State, State]:
    torch.manual_seed(0)
    net = tv_models.resnet50(num_classes=7)
    _randomise_bn(net, 1)
    net.eval()
    state = net.state_dict()
    model = {k: v for k, v in state.items() if not k.startswith("fc.")}  # resnet50_fe: no fc
    classifier = {"fc.weight": state["fc.weight"], "fc.bias": state["fc.bias"]}
    return net, model, classifier


def test_resnet50_file_matches_torchvision(tmp_path: Path, resnet50: tuple[nn.Module, State, State]) -> None:
    reference, model, classifier = resnet50
    scale = 0.5 + torch.rand(7, generator=torch.Generator().manual_seed(5))
    path = save_reference(tmp_path / "r50.pth.tar", model, classifier, scale=scale)
    net = load_reference_checkpoint(path, "resnet50", 7)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x) * scale, atol=1e-4, rtol=1e-3)
        stage1 = load_reference_checkpoint(save_reference(tmp_path / "s1.pth.tar", model, classifier), "resnet50", 7)
        assert type(stage1.classifier) is nn.Linear
        assert torch.allclose(stage1(x), reference(x), atol=1e-4, rtol=1e-3)


def test_places_file_maps_trunk_block_and_class_order(tmp_path: Path) -> None:
    torch.manual_seed(7)
    trunk = tv_models.ResNet(Bottleneck, [3, 8, 36, 2])  # the reference's resnet152 with layer4 of 2 blocks
    trunk.fc = nn.Identity()  # type: ignore[assignment]
    block = Bottleneck(2048, 512)  # train_stage1.py: the standalone new block
    _randomise_bn(trunk, 8)
    _randomise_bn(block, 9)
    fc = nn.Linear(2048, 6)
    scale = 0.5 + torch.rand(6, generator=torch.Generator().manual_seed(10))
    path = save_reference(tmp_path / "places.pth.tar", trunk.state_dict(), {"fc.weight": fc.weight.detach(),
                          "fc.bias": fc.bias.detach()}, block=block.state_dict(), scale=scale)
    order = (3, 0, 5, 1, 4, 2)  # our class c is the reference's output order[c]
    net = load_reference_checkpoint(path, "resnet152_places", 6, class_order=order)
    trunk.eval()
    block.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        t = trunk
        h = t.layer4(t.layer3(t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x))))))))
        ref_logits = fc(block(h).mean(dim=(2, 3))) * scale
        got = net(x)
    assert torch.allclose(got, ref_logits[:, list(order)], atol=1e-4, rtol=1e-3)
    assert net.trunk is not None and not any(p.requires_grad for p in net.trunk.parameters())


# --- bad files --------------------------------------------------------------------------------

def test_bad_files_name_the_file_and_the_key(tmp_path: Path, resnet50: tuple[nn.Module, State, State]) -> None:
    model, classifier = ref_resnet32_state(10, seed=12)
    good = save_reference(tmp_path / "good.pth", model, classifier)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match="garbage.pth"):
        load_reference_checkpoint(garbage, "resnet32", 10)
    with pytest.raises(UsageError, match="checkpoint not found"):
        load_reference_checkpoint(tmp_path / "missing.pth", "resnet32", 10)

    no_classifier = tmp_path / "noclf.pth"
    torch.save({"state_dict_model": model}, no_classifier)
    with pytest.raises(UsageError, match="noclf.pth.*'state_dict_classifier'"):
        load_reference_checkpoint(no_classifier, "resnet32", 10)

    with pytest.raises(UsageError, match=r"good.pth.*state_dict_classifier/fc.weight has shape \(10, 64\)"):
        load_reference_checkpoint(good, "resnet32", 100)

    lacking = save_reference(tmp_path / "lacking.pth",
                             {k: v for k, v in model.items() if k != "layer3.4.bn2.running_var"}, classifier)
    with pytest.raises(UsageError, match="lacking.pth: missing key state_dict_model/layer3.4.bn2.running_var"):
        load_reference_checkpoint(lacking, "resnet32", 10)

    _, r50_model, r50_classifier = resnet50
    r50 = save_reference(tmp_path / "r50.pth", r50_model, r50_classifier)
    with pytest.raises(UsageError, match="r50.pth: unexpected key state_dict_model/layer1.0.conv3.weight"):
        load_reference_checkpoint(r50, "resnet32", 7)
    with pytest.raises(UsageError, match="r50.pth.*'state_dict_block'"):
        load_reference_checkpoint(r50, "resnet152_places", 7)

    ours = tmp_path / "ours.pt"
    torch.save({"format_version": 1, "kind": "stage1", "model": {}}, ours)
    with pytest.raises(UsageError, match="ours.pt is a mislas checkpoint"):
        load_reference_checkpoint(ours, "resnet32", 10)
    stage2 = save_reference(tmp_path / "s2.pth", model, classifier, scale=torch.ones(10))
    with pytest.raises(UsageError, match="s2.pth has 'state_dict_lws_model'"):
        load_reference_into(build_model("resnet32", 10, load_pretrained=False), read_reference_checkpoint(stage2),
                            "resnet32")
    with pytest.raises(UsageError, match="permutation"):
        load_reference_checkpoint(good, "resnet32", 10, class_order=[0] * 10)


# --- class order ------------------------------------------------------------------------------

# np.argsort(-counts) as NumPy 1.26 computes it on its generic (pre-AVX-512) path, the path
# the reference's 2021 NumPy took; recorded once with NPY_DISABLE_CPU_FEATURES set.
CLASSIC_CASES: list[tuple[list[int], list[int]]] = [
    ([5, 3, 3, 7, 3, 5, 1, 3, 3, 5, 7, 3, 3, 1, 5, 3, 3, 5, 3, 7, 3, 5],
     [10, 19, 3, 17, 14, 9, 0, 5, 21, 7, 8, 20, 11, 12, 4, 15, 16, 2, 18, 1, 13, 6]),
    ([40, 40, 30, 50, 40, 30, 30, 20, 40, 40, 30, 10, 20, 20, 40, 30, 10, 20, 50, 40, 20, 50, 20, 50, 10, 10, 10,
      20, 30, 50, 30, 20, 10, 50, 50, 40, 50, 40, 20, 40],
     [36, 3, 34, 33, 29, 23, 21, 18, 0, 37, 35, 14, 19, 39, 1, 4, 9, 8, 15, 2, 10, 5, 6, 30, 28, 31, 7, 13, 12, 22,
      20, 38, 17, 27, 25, 24, 32, 16, 11, 26]),
]


@pytest.mark.parametrize(("counts", "argsort"), CLASSIC_CASES)
def test_class_map_follows_numpys_classic_tie_order(counts: list[int], argsort: list[int]) -> None:
    class_map = reference_class_map(counts)
    assert [class_map[c] for c in argsort] == list(range(len(counts)))  # class_map[sorted[i]] = i
    ranks = sorted(range(len(counts)), key=lambda c: class_map[c])
    assert [counts[c] for c in ranks] == sorted(counts, reverse=True)


def test_class_map_by_hand() -> None:
    # -counts = [-2, -5, -5, -1]: 4 elements, insertion sort, ties keep their order -> [1, 2, 0, 3]
    assert reference_class_map([2, 5, 5, 1]) == (2, 0, 1, 3)
    assert reference_class_map([]) == () and reference_class_map([9]) == (0,)


def _list_split(labels: list[int], list_file: str) -> FileListSplit:
    return FileListSplit(root=Path("/data"), paths=tuple(f"{i}.jpg" for i in range(len(labels))),
                         labels=torch.tensor(labels, dtype=torch.int64), list_file=Path(list_file))


def test_class_order_counts_the_whole_train_list(tiny: LTData) -> None:
    train = _list_split([0, 1, 1, 2, 2, 2], "train.txt")
    held_out = _list_split([0, 0, 0, 0], "train.txt")  # val held out of the train list (iNat)
    own_list = _list_split([0, 0, 0, 0], "val.txt")
    base = replace(tiny, train=train, test=own_list, class_counts=(1, 2, 3))
    assert reference_class_order(replace(base, val=held_out)) == (0, 2, 1)  # counts 5, 2, 3
    assert reference_class_order(replace(base, val=own_list)) == (2, 1, 0)  # counts 1, 2, 3
    assert reference_class_order(tiny) is None  # CIFAR-like arrays: labels as given
    assert isinstance(tiny.train, ArraySplit)


# --- Stage 1 from either source ---------------------------------------------------------------

def _cfg() -> RunConfig:
    return RunConfig(stage1=Stage1Config(arch="resnet32", epochs=1, batch_size=16, warmup_epochs=1, milestones=(1,)),
                     seed=0, device="cpu", channels_last=False)


def test_load_any_stage1_reads_both_formats(tmp_path: Path, tiny: LTData, one_thread: None) -> None:
    model, classifier = ref_resnet32_state(3, seed=13, in_channels=1)
    ref_path = save_reference(tmp_path / "ref_s1.pth.tar", model, classifier)
    net = load_any_stage1(ref_path, tiny, _cfg(), CPU)
    assert type(net.classifier) is nn.Linear
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(14))
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), ref_resnet32_logits(model, classifier, x), atol=1e-4, rtol=1e-4)

    result = train_stage1(tiny, _cfg(), device=CPU, checkpoint_dir=tmp_path / "ours", progress=False)
    ours = load_any_stage1(tmp_path / "ours" / "stage1.pt", tiny, _cfg(), CPU)
    for k, v in result.model.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k

    with pytest.raises(UsageError, match="Stage-2 file"):
        load_any_stage1(save_reference(tmp_path / "ref_s2.pth", model, classifier, scale=torch.ones(3)),
                        tiny, _cfg(), CPU)
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(UsageError, match="other.pth is neither"):
        load_any_stage1(other, tiny, _cfg(), CPU)
