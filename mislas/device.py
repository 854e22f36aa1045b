"""Where a run computes, and how: the device choice, host-to-device copies, autocast.

One module so that the precision switch (:func:`autocast`) is one attribute that every
stage looks up at call time: a benchmark that swaps it (``benchmarks.cuda_paths.precision``)
swaps it for the epoch loop, the evaluation and the Stage-2 engine at once.
"""

from __future__ import annotations

import torch

from mislas.errors import UsageError

__all__ = ["autocast", "resolve_device", "sum_dtype", "to_device"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; UsageError otherwise.

    Checked before any data is loaded, so a missing GPU fails in one line, not mid-run.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"device must be one of auto, cpu, cuda, cuda:N, mps, got {name!r}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} asks for CUDA, which is not available here "
                             f"(torch {torch.__version__}); use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"device {name!r} asks for MPS, which is not available here; use auto or cpu")
        return device
    raise UsageError(f"device must be one of auto, cpu, cuda, cuda:N, mps, got {name!r}")


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on ``device`` (asynchronous copy), channels-last for 4-d images when asked."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for loss sums on the device (MPS has none: float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (same math, faster); plain fp32 on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
