"""The code paths that must agree on a CUDA device (issue 19), as pytest tests.

Marked ``cuda``: skipped where the device is CUDA and none is present (the normal suite on a
CPU machine). ``MISLAS_TEST_DEVICE`` picks the device (default ``cuda``); with
``MISLAS_TEST_DEVICE=cpu`` they run here on tiny sizes, as the GPU check's dry mode does. The
comparisons live in :mod:`benchmarks.cuda_paths`, which ``scripts/gpu-check.sh`` step b calls
without pytest.

    MISLAS_TEST_DEVICE=cuda pytest -m cuda tests/gpu     # on a lent GPU
    MISLAS_TEST_DEVICE=cpu pytest -m cuda tests/gpu      # here
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks import cuda_paths

DEVICE = os.environ.get("MISLAS_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                       reason="no CUDA device (MISLAS_TEST_DEVICE=cpu runs these on the CPU)"),
]


@pytest.fixture(scope="module", params=[DEVICE])
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="module")
def sizes(device: torch.device) -> cuda_paths.Sizes:
    return cuda_paths.FULL if device.type == "cuda" else cuda_paths.TINY


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread(device: torch.device):  # type: ignore[no-untyped-def]
    """On the CPU, tiny tensors at one thread (tests/conftest.py's one_thread, module-wide here)."""
    old = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("check", cuda_paths.CHECKS, ids=[c.__name__ for c in cuda_paths.CHECKS])
def test_paths_agree(check, device: torch.device, sizes: cuda_paths.Sizes) -> None:  # type: ignore[no-untyped-def]
    result = check(device, sizes)
    assert result.passed, f"{result.name}: {result.measured} (tolerance: {result.tolerance}; {result.detail})"
