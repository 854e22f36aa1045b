"""The reference implementation's checkpoint layouts, restated (a helpers module shared by
tests/mislas/test_reference.py and test_evaluate_cli.py): random ResNet-32 weights under the
reference's names, a hand-written forward, and a file as its ``save_checkpoint`` writes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

State = dict[str, torch.Tensor]


def _bn(state: State, name: str, channels: int, g: torch.Generator) -> None:
    state[f"{name}.weight"] = 1 + 0.2 * torch.randn(channels, generator=g)
    state[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=g)
    state[f"{name}.running_mean"] = 0.1 * torch.randn(channels, generator=g)
    state[f"{name}.running_var"] = 0.5 + torch.rand(channels, generator=g)
    state[f"{name}.num_batches_tracked"] = torch.tensor(123)


def ref_resnet32_state(num_classes: int, seed: int, in_channels: int = 3) -> tuple[State, State]:
    """``resnet32_fe`` + ``Classifier`` names of the reference: conv1, bn1, layer1..3 × 5 blocks, fc."""
    g = torch.Generator().manual_seed(seed)
    model: State = {}

    def conv(name: str, cout: int, cin: int) -> None:
        model[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5

    conv("conv1", 16, in_channels)
    _bn(model, "bn1", 16, g)
    cin = 16
    for stage, planes in enumerate((16, 32, 64), start=1):
        for b in range(5):
            conv(f"layer{stage}.{b}.conv1", planes, cin)
            _bn(model, f"layer{stage}.{b}.bn1", planes, g)
            conv(f"layer{stage}.{b}.conv2", planes, planes)
            _bn(model, f"layer{stage}.{b}.bn2", planes, g)
            cin = planes
    classifier = {"fc.weight": 0.3 * torch.randn(num_classes, 64, generator=g),
                  "fc.bias": 0.1 * torch.randn(num_classes, generator=g)}
    return model, classifier


def ref_resnet32_logits(model: State, classifier: State, x: torch.Tensor, scale: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """The reference's ResNet-32 forward by hand: option-A shortcut = subsample + zero channels planes//4 a side."""

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(h, model[f"{name}.running_mean"], model[f"{name}.running_var"], model[f"{name}.weight"],
                            model[f"{name}.bias"], training=False, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, model["conv1.weight"], padding=1), "bn1"))
    for stage, planes in enumerate((16, 32, 64), start=1):
        for b in range(5):
            p = f"layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            out = F.relu(bn(F.conv2d(h, model[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, model[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            shortcut = h if stride == 1 else F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            h = F.relu(out + shortcut)
    logits = h.mean(dim=(2, 3)) @ classifier["fc.weight"].T + classifier["fc.bias"]
    return logits if scale is None else logits * scale


def _wrap(state: State, prefix: bool) -> State:
    return {("module." if prefix else "") + k: v for k, v in state.items()}


def save_reference(path: Path, model: State, classifier: State, *, block: State | None = None,
                   scale: torch.Tensor | None = None, prefix: bool = True) -> Path:
    """A file as the reference's ``save_checkpoint`` writes it (Stage 2 when ``scale`` is given)."""
    payload: dict[str, object] = {
        "epoch": 10 if scale is not None else 200,
        "state_dict_model": _wrap(model, prefix),
        "state_dict_classifier": _wrap(classifier, prefix),
        "best_acc1": torch.tensor(47.25),
        "its_ece": np.float64(4.83),  # a NumPy scalar in the real files (utils calibration)
    }
    if block is not None:
        payload["state_dict_block"] = _wrap(block, prefix)
    if scale is not None:
        payload["state_dict_lws_model"] = _wrap({"learned_norm": scale.reshape(1, -1)}, prefix)
    torch.save(payload, path)
    return path
