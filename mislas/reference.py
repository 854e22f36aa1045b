"""Checkpoints of the MiSLAS reference implementation (dvlab-research/MiSLAS), read into a :class:`Network`.

Why: the authors publish Stage-1 and Stage-2 models; reading them lets a user evaluate the
published models with our metrics and search Stage 2 on the authors' own Stage 1.

The reference's file layout. The published numbers come from dvlab-research/MiSLAS at 0fc381e
(its main branch); our code index holds other commits of it, so the line numbers below are those
of the files as stored there: train_stage1.py at 6d9530e, train_stage2.py at b4e576d (a
pull-request branch: its train_stage2.py lines are 0fc381e's + 9 after the resume block),
datasets/places.py at bb5ba7e, datasets/ina2018.py at dcdc6cf:

- Top level (``save_checkpoint`` in train_stage1.py:257-273 and train_stage2.py:277-294):
  ``epoch``, ``state_dict_model``, ``state_dict_classifier``, ``best_acc1``, ``its_ece``;
  Places-LT adds ``state_dict_block``; Stage 2 adds ``state_dict_lws_model``.
- Each ``state_dict_*`` comes from a module wrapped in ``DataParallel`` (train_stage1.py:164-169,
  train_stage2.py:176-182, the default ``gpu: null``, ``distributed: False`` of every config) or
  ``DistributedDataParallel``, so keys usually start with ``module.``; with ``gpu`` set they do not
  (train_stage1.py:158-163). Both are read.
- ``state_dict_model``: CIFAR ``resnet32_fe`` of models/resnet_cifar.py (not in our index; its
  sibling models/resnet_cifar_byot.py ``ResNet_fe``/``BasicBlock`` has the same definition):
  ``conv1``, ``bn1``, ``layer1``..``layer3`` of 5 ``BasicBlock`` each with ``conv1``, ``bn1``,
  ``conv2``, ``bn2`` and a parameter-free option-A ``shortcut``. ImageNet-LT / iNat
  ``resnet50_fe`` (models/resnet.py ``ResNet_FE``): torchvision's names without ``fc``.
  Places-LT ``resnet152_fe`` (models/resnet_places.py, not in our index; derived copy
  juyongjiang/FBL models/resnet_places.py): torchvision's ResNet-152 names with layer4 of 2
  blocks and no ``fc``.
- ``state_dict_block`` (Places-LT): a standalone ``Bottleneck(2048, 512)`` (train_stage1.py:126,
  train_stage2.py:128-129): ``conv1``..``bn3``, no ``downsample``.
- ``state_dict_classifier``: ``Classifier`` with one ``fc`` Linear (models/resnet.py
  ``Classifier``; models/resnet_cifar_byot.py ``Classifier``): ``fc.weight``, ``fc.bias``.
- ``state_dict_lws_model``: ``LearnableWeightScaling`` of methods.py (not in our index; restated
  identically in several derived copies): one parameter ``learned_norm`` of shape [1, K], and
  ``forward(x) = learned_norm * x`` applied to the classifier's logits (train_stage2.py:345-346,
  355-356 and in ``validate``). Logits = s ⊙ (W f + b): exactly :class:`ScaledClassifier`.

Class order: for its list data sets the reference renumbers classes by descending train count
(datasets/places.py:26-34 and datasets/ina2018.py:26-34, ``class_map`` from
``np.argsort(-counts)``, applied to the eval list too, :72). Output j of a reference model is
therefore the class of rank j, and rows must be put back in label order. NumPy's default
argsort is not stable, and its tie order changed with the AVX-512 sort of NumPy >= 1.25, so
:func:`reference_class_map` restates the classic introsort that the reference's NumPy (2021)
ran. CIFAR-LT is not renumbered (datasets/cifar100.py: ``targets`` kept).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mislas.config import RunConfig
from mislas.data.types import FileListSplit, LTData
from mislas.errors import UsageError
from mislas.models import Network, ResNet32Body, ScaledClassifier, build_model
from mislas.safe_load import load_torch_file

MODEL = "state_dict_model"
CLASSIFIER = "state_dict_classifier"
BLOCK = "state_dict_block"
LWS = "state_dict_lws_model"
SECTIONS = (MODEL, CLASSIFIER, BLOCK, LWS)
"""The reference's top-level state-dict entries, in the order they are checked."""

PLACES_ARCH = "resnet152_places"
_OPTIONAL_SUFFIX = ".num_batches_tracked"  # BN's step counter: unused in eval, absent in old files


# --- reading files ----------------------------------------------------------------------------

def read_checkpoint_file(path: Path | str) -> dict[str, Any]:
    """The top-level dict of a checkpoint file, loaded without running arbitrary pickled code."""
    path = Path(path)
    payload = load_torch_file(path)  # weights-only, with the NumPy scalars of the reference's files
    if not isinstance(payload, dict):
        raise UsageError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict of state dicts")
    return payload


def is_mislas_payload(payload: Mapping[str, Any]) -> bool:
    """Our own checkpoints (:mod:`mislas.checkpoint`) carry ``format_version``."""
    return "format_version" in payload


def is_reference_payload(payload: Mapping[str, Any]) -> bool:
    return MODEL in payload and CLASSIFIER in payload


def describe_keys(payload: Mapping[str, Any]) -> str:
    keys = sorted(str(k) for k in payload)
    return ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")


@dataclass(frozen=True)
class ReferenceCheckpoint:
    """The reference's state dicts, ``module.`` prefixes removed; ``lws`` only in Stage 2."""

    path: Path
    model: dict[str, torch.Tensor]
    classifier: dict[str, torch.Tensor]
    block: dict[str, torch.Tensor] | None
    lws: dict[str, torch.Tensor] | None
    epoch: int | None

    @property
    def stage(self) -> int:
        return 2 if self.lws is not None else 1

    def section(self, name: str) -> dict[str, torch.Tensor] | None:
        return {MODEL: self.model, CLASSIFIER: self.classifier, BLOCK: self.block, LWS: self.lws}[name]


def _strip_wrapper(path: Path, name: str, state: object) -> dict[str, torch.Tensor]:
    """One state dict with the (Distributed)DataParallel ``module.`` prefix removed where all keys have it."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise UsageError(f"checkpoint {path}: {name} is a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        bad = next(k for k, v in state.items() if not isinstance(v, torch.Tensor))
        raise UsageError(f"checkpoint {path}: {name}/{bad} is not a tensor")
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def reference_from_payload(path: Path | str, payload: Mapping[str, Any]) -> ReferenceCheckpoint:
    """Check the top-level layout of a reference checkpoint and unwrap its state dicts."""
    path = Path(path)
    if is_mislas_payload(payload):
        raise UsageError(f"checkpoint {path} is a mislas checkpoint, not one of the reference implementation")
    for name in (MODEL, CLASSIFIER):
        if name not in payload:
            raise UsageError(
                f"checkpoint {path} is not a reference MiSLAS checkpoint: no {name!r} "
                f"(top-level keys: {describe_keys(payload)})"
            )
    sections = {name: _strip_wrapper(path, name, payload[name]) if name in payload else None for name in SECTIONS}
    epoch = payload.get("epoch")
    model, classifier = sections[MODEL], sections[CLASSIFIER]
    assert model is not None and classifier is not None
    return ReferenceCheckpoint(
        path=path, model=model, classifier=classifier, block=sections[BLOCK], lws=sections[LWS],
        epoch=int(epoch) if isinstance(epoch, int) else None,
    )


def read_reference_checkpoint(path: Path | str) -> ReferenceCheckpoint:
    return reference_from_payload(path, read_checkpoint_file(path))


# --- names: ours -> the reference's -----------------------------------------------------------

_LAYERS = re.compile(r"^body\.layers\.(\d+)\.(.+)$")


def reference_key_map(model: Network, arch: str) -> dict[str, tuple[str, str]]:
    """For every entry of ``model.state_dict()``: (reference section, reference key).

    The names are spelled out per architecture (module docstring) instead of matched by
    position, so a file of another architecture fails on a named key, not on a shape.
    """
    out: dict[str, tuple[str, str]] = {}
    blocks_per_stage = len(model.body.layers) // 3 if isinstance(model.body, ResNet32Body) else 0
    for key in model.state_dict():
        if key.startswith("classifier."):
            out[key] = _classifier_key(model.classifier, key.removeprefix("classifier."))
        elif arch == "resnet32":
            m = _LAYERS.match(key)
            if m:  # ours: one Sequential of 15 blocks; theirs: layer1..layer3 of 5
                i = int(m.group(1))
                out[key] = (MODEL, f"layer{i // blocks_per_stage + 1}.{i % blocks_per_stage}.{m.group(2)}")
            else:
                out[key] = (MODEL, key.removeprefix("body."))  # conv1, bn1
        elif arch == PLACES_ARCH:
            if key.startswith("trunk."):
                out[key] = (MODEL, key.removeprefix("trunk."))
            elif key.startswith("body.0."):
                out[key] = (BLOCK, key.removeprefix("body.0."))
            else:
                raise AssertionError(f"unmapped Places parameter {key}")
        else:  # torchvision ResNet-50/101/152: the same names without fc
            out[key] = (MODEL, key.removeprefix("body."))
    return out


def _classifier_key(head: nn.Module, key: str) -> tuple[str, str]:
    if isinstance(head, ScaledClassifier):
        if key == "scale":
            return (LWS, "learned_norm")
        return (CLASSIFIER, "fc." + key.removeprefix("linear."))
    return (CLASSIFIER, "fc." + key)


# --- loading ----------------------------------------------------------------------------------

def _check_sections(ref: ReferenceCheckpoint, arch: str) -> None:
    if arch == PLACES_ARCH and ref.block is None:
        raise UsageError(f"checkpoint {ref.path}: arch {arch} needs {BLOCK!r} (the trained block), the file has none")
    if arch != PLACES_ARCH and ref.block is not None:
        raise UsageError(
            f"checkpoint {ref.path} has {BLOCK!r}, a Places-LT file; it loads as arch {PLACES_ARCH}, not {arch}"
        )


def _check_permutation(order: Sequence[int], num_classes: int) -> torch.Tensor:
    index = torch.as_tensor(list(order), dtype=torch.int64)
    if index.shape != (num_classes,) or not torch.equal(torch.sort(index).values, torch.arange(num_classes)):
        raise UsageError(f"class_order must be a permutation of 0..{num_classes - 1}, got {len(order)} entries")
    return index


def load_reference_into(
    model: Network, ref: ReferenceCheckpoint, arch: str, *, class_order: Sequence[int] | None = None
) -> Network:
    """Copy ``ref`` into ``model`` (built for ``arch``), checking every name and shape.

    ``class_order[c]`` is the reference's output index of our class ``c`` (see
    :func:`reference_class_order`); the classifier rows and the scale follow it.
    """
    _check_sections(ref, arch)
    key_map = reference_key_map(model, arch)
    ours = model.state_dict()
    head = model.classifier.linear if isinstance(model.classifier, ScaledClassifier) else model.classifier
    assert isinstance(head, nn.Linear), f"a reference classifier is linear, got {type(head).__name__}"
    num_classes = head.out_features
    index = None if class_order is None else _check_permutation(class_order, num_classes)
    expected: dict[str, set[str]] = {}
    for section, ref_key in key_map.values():
        expected.setdefault(section, set()).add(ref_key)
    for section in SECTIONS:
        state = ref.section(section)
        if state is None:
            if section in expected:  # only LWS can get here: a Stage-1 file for a scaled head
                raise UsageError(f"checkpoint {ref.path} has no {section!r}: it is a Stage-1 file")
            continue
        if section not in expected:  # only LWS can get here: dropping the scale would change the model
            raise UsageError(f"checkpoint {ref.path} has {section!r} (a Stage-2 file); the model to load it into "
                             "has no per-class scale")
        unexpected = [k for k in state if k not in expected[section]]
        if unexpected:
            raise UsageError(
                f"checkpoint {ref.path}: unexpected key {section}/{unexpected[0]} for arch {arch} "
                f"({len(unexpected)} unexpected in all)"
            )
    new_state: dict[str, torch.Tensor] = {}
    for our_key, (section, ref_key) in key_map.items():
        state = ref.section(section)
        assert state is not None
        if ref_key not in state:
            if our_key.endswith(_OPTIONAL_SUFFIX):
                new_state[our_key] = ours[our_key]
                continue
            raise UsageError(f"checkpoint {ref.path}: missing key {section}/{ref_key} that arch {arch} needs")
        value = state[ref_key]
        if section == LWS:  # [1, K] in the reference, [K] here
            if value.shape != (1, *ours[our_key].shape):
                raise UsageError(f"checkpoint {ref.path}: {section}/{ref_key} has shape {tuple(value.shape)}, "
                                 f"arch {arch} with {num_classes} classes needs (1, {num_classes})")
            value = value.reshape(ours[our_key].shape)
        elif value.shape != ours[our_key].shape:
            raise UsageError(f"checkpoint {ref.path}: {section}/{ref_key} has shape {tuple(value.shape)}, "
                             f"arch {arch} with {num_classes} classes needs {tuple(ours[our_key].shape)}")
        if index is not None and section in (CLASSIFIER, LWS):
            value = value.index_select(0, index)
        new_state[our_key] = value.to(ours[our_key].dtype)
    model.load_state_dict(new_state, strict=True)
    return model


def load_reference_checkpoint(
    path: Path | str,
    arch: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    class_order: Sequence[int] | None = None,
) -> Network:
    """A reference Stage-1 or Stage-2 checkpoint as a :class:`Network` in eval mode.

    A Stage-2 file (with ``state_dict_lws_model``) gets a :class:`ScaledClassifier`:
    logits = s ⊙ (W f + b), as the reference computes them (train_stage2.py:355-356).
    """
    ref = read_reference_checkpoint(path)
    model = build_model(arch, num_classes, in_channels, None, load_pretrained=False)
    if ref.lws is not None:
        assert isinstance(model.classifier, nn.Linear)
        model.classifier = ScaledClassifier(model.classifier, train_weight=True, train_scale=True)
    return load_reference_into(model, ref, arch, class_order=class_order).eval()


# --- class order ------------------------------------------------------------------------------

_SMALL_QUICKSORT = 15  # NumPy's cut-over to insertion sort (partitions of at most 16 elements)


def _classic_argsort(values: Sequence[int]) -> list[int]:
    """NumPy's pre-SIMD default argsort: median-of-3 introsort, insertion sort below 17, heapsort past 2·log2 n.

    Restated (not NumPy's code) so that ties come out as the reference's NumPy put them;
    checked against NumPy 1.26's generic path on random arrays with many ties. NumPy >= 1.25
    on AVX-512 machines uses another algorithm with another tie order.
    """
    v = [int(x) for x in values]
    n = len(v)
    idx = list(range(n))
    stack: list[tuple[int, int, int]] = []
    lo, hi, depth = 0, n - 1, 2 * (n.bit_length() - 1)
    while n > 1:
        if depth < 0:
            _heap_argsort(v, idx, lo, hi - lo + 1)
        else:
            while hi - lo > _SMALL_QUICKSORT:
                mid = lo + ((hi - lo) >> 1)
                if v[idx[mid]] < v[idx[lo]]:
                    idx[mid], idx[lo] = idx[lo], idx[mid]
                if v[idx[hi]] < v[idx[mid]]:
                    idx[hi], idx[mid] = idx[mid], idx[hi]
                if v[idx[mid]] < v[idx[lo]]:
                    idx[mid], idx[lo] = idx[lo], idx[mid]
                pivot = v[idx[mid]]
                i, j = lo, hi - 1
                idx[mid], idx[j] = idx[j], idx[mid]
                while True:
                    i += 1
                    while v[idx[i]] < pivot:
                        i += 1
                    j -= 1
                    while pivot < v[idx[j]]:
                        j -= 1
                    if i >= j:
                        break
                    idx[i], idx[j] = idx[j], idx[i]
                idx[i], idx[hi - 1] = idx[hi - 1], idx[i]
                depth -= 1
                if i - lo < hi - i:  # keep the smaller side, stack the larger
                    stack.append((i + 1, hi, depth))
                    hi = i - 1
                else:
                    stack.append((lo, i - 1, depth))
                    lo = i + 1
            for i in range(lo + 1, hi + 1):
                item, j = idx[i], i
                while j > lo and v[item] < v[idx[j - 1]]:
                    idx[j] = idx[j - 1]
                    j -= 1
                idx[j] = item
        if not stack:
            break
        lo, hi, depth = stack.pop()
    return idx


def _heap_argsort(v: list[int], idx: list[int], start: int, count: int) -> None:
    """Heapsort of ``idx[start:start + count]`` by ``v`` (1-based heap, as NumPy's)."""

    def sift(i: int, size: int, item: int) -> None:
        j = 2 * i
        while j <= size:
            if j < size and v[idx[start + j - 1]] < v[idx[start + j]]:
                j += 1
            if v[item] < v[idx[start + j - 1]]:
                idx[start + i - 1] = idx[start + j - 1]
                i, j = j, 2 * j
            else:
                break
        idx[start + i - 1] = item

    for top in range(count >> 1, 0, -1):
        sift(top, count, idx[start + top - 1])
    size = count
    while size > 1:
        item = idx[start + size - 1]
        idx[start + size - 1] = idx[start]
        size -= 1
        sift(1, size, item)


def reference_class_map(counts: Sequence[int]) -> tuple[int, ...]:
    """``class_map[c]``: the reference's index of class ``c`` (rank by descending train count).

    As datasets/places.py:29-32 builds it: ``sorted = argsort(-counts)``,
    ``class_map[sorted[i]] = i``, with NumPy's classic tie order.
    """
    order = _classic_argsort([-int(c) for c in counts])
    class_map = [0] * len(order)
    for rank, cls in enumerate(order):
        class_map[cls] = rank
    return tuple(class_map)


def reference_class_order(data: LTData) -> tuple[int, ...] | None:
    """How the reference numbered ``data``'s classes: a class map for list data sets, None for CIFAR.

    The reference counts its whole train list; where our val split is held out of that list
    (iNaturalist), its images are counted back in.
    """
    if not isinstance(data.train, FileListSplit):
        return None
    labels = data.train.labels
    if isinstance(data.val, FileListSplit) and data.val.list_file == data.train.list_file:
        labels = torch.cat([labels, data.val.labels])
    counts = torch.bincount(labels, minlength=data.num_classes).tolist()
    return reference_class_map(counts)


def load_any_stage1(path: Path | str, data: LTData, cfg: RunConfig, device: torch.device) -> Network:
    """A Stage-1 model from our checkpoint or from the reference's, told apart by their keys.

    Ours go through :func:`mislas.stages.load_stage1` (data and recipe checked); the
    reference's are checked by name and shape only (they carry no data fingerprint), and
    come with a plain linear classifier, ready for Stage 2.
    """
    from mislas.stages import load_stage1  # stages imports models; imported here to keep this module light

    path = Path(path)
    payload = read_checkpoint_file(path)
    if is_mislas_payload(payload):
        return load_stage1(path, data, cfg, device)
    if not is_reference_payload(payload):
        raise UsageError(
            f"checkpoint {path} is neither a mislas checkpoint (format_version) nor a reference one "
            f"({MODEL}, {CLASSIFIER}); top-level keys: {describe_keys(payload)}"
        )
    ref = reference_from_payload(path, payload)
    if ref.stage != 1:
        raise UsageError(f"checkpoint {path} is a reference Stage-2 file ({LWS}); give the Stage-1 file")
    model = build_model(cfg.stage1.arch, data.num_classes, data.in_channels, None, load_pretrained=False)
    load_reference_into(model, ref, cfg.stage1.arch, class_order=reference_class_order(data))
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model
