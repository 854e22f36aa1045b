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

Class order (the reference renumbers the classes of its list data sets by descending train
count): :mod:`mislas.reference_order`.
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
from mislas.data.types import LTData
from mislas.errors import UsageError
from mislas.models import Network, ResNet32Body, ScaledClassifier, build_model
from mislas.reference_order import reference_class_map as reference_class_map  # re-exported: its old home
from mislas.reference_order import reference_class_order as reference_class_order  # re-exported too
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
    """Whether ``payload`` holds the reference's model and classifier sections."""
    return MODEL in payload and CLASSIFIER in payload


def describe_keys(payload: Mapping[str, Any]) -> str:
    """The payload's keys, sorted, the first eight (``...`` after them if more), for error messages."""
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
        """The stage the checkpoint comes from: 2 when it has an LWS section, else 1."""
        return 2 if self.lws is not None else 1

    def section(self, name: str) -> dict[str, torch.Tensor] | None:
        """The state dict of the named section (None where the checkpoint has none)."""
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
    """Read a checkpoint file written by the reference implementation."""
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
    _check_keys(ref, key_map, arch)
    new_state: dict[str, torch.Tensor] = {}
    for our_key, (section, ref_key) in key_map.items():
        state = ref.section(section)
        assert state is not None
        if ref_key not in state:
            if our_key.endswith(_OPTIONAL_SUFFIX):
                new_state[our_key] = ours[our_key]
                continue
            raise UsageError(f"checkpoint {ref.path}: missing key {section}/{ref_key} that arch {arch} needs")
        value = _shaped(ref, section, ref_key, state[ref_key], ours[our_key], arch, num_classes)
        if index is not None and section in (CLASSIFIER, LWS):
            value = value.index_select(0, index)
        new_state[our_key] = value.to(ours[our_key].dtype)
    model.load_state_dict(new_state, strict=True)
    return model


def _check_keys(ref: ReferenceCheckpoint, key_map: Mapping[str, tuple[str, str]], arch: str) -> None:
    """UsageError for a section the model needs and the file lacks (or the reverse), or a key no parameter maps to."""
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


def _shaped(ref: ReferenceCheckpoint, section: str, ref_key: str, value: torch.Tensor, ours: torch.Tensor, arch: str,
            num_classes: int) -> torch.Tensor:
    """The reference's tensor in our shape (the LWS scale [1, K] -> [K]); UsageError naming it if it does not fit."""
    if section == LWS:  # [1, K] in the reference, [K] here
        if value.shape != (1, *ours.shape):
            raise UsageError(f"checkpoint {ref.path}: {section}/{ref_key} has shape {tuple(value.shape)}, "
                             f"arch {arch} with {num_classes} classes needs (1, {num_classes})")
        return value.reshape(ours.shape)
    if value.shape != ours.shape:
        raise UsageError(f"checkpoint {ref.path}: {section}/{ref_key} has shape {tuple(value.shape)}, "
                         f"arch {arch} with {num_classes} classes needs {tuple(ours.shape)}")
    return value


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


def load_any_stage1(path: Path | str, data: LTData, cfg: RunConfig, device: torch.device) -> Network:
    """A Stage-1 model from our checkpoint or from the reference's, told apart by their keys.

    Ours go through :func:`mislas.stage1.load_stage1` (data and recipe checked); the
    reference's are checked by name and shape only (they carry no data fingerprint), and
    come with a plain linear classifier, ready for Stage 2.
    """
    from mislas.stage1 import load_stage1  # stage1 imports the training stack; imported here to keep this module light

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
