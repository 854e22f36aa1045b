"""Helpers shared by test modules of both packages (test modules never import each other)."""

from __future__ import annotations

from dataclasses import replace

from mislas.config import RunConfig, Stage1Config, Stage2Config


def tiny_cfg(**stage2: object) -> RunConfig:
    """A tiny Stage-1/Stage-2 budget on CPU (ResNet-32, one Stage-1 and two Stage-2 epochs)."""
    return RunConfig(
        stage1=Stage1Config(arch="resnet32", epochs=1, lr=0.05, batch_size=16, warmup_epochs=1, milestones=()),
        stage2=replace(Stage2Config(epochs=2, lr=0.05, batch_size=16, eps_1=0.3, eps_k=0.1, dw_ratio=0.2), **stage2),
        seed=0, device="cpu", channels_last=False,
    )
