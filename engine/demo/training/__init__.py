"""How the bundled demo weights were made: training scripts for the target, drafter, MAR models and the
quality classifier, each runnable with ``python -m specar.demo.training.<script>`` (the tree head comes
from ``specar train-head``, which trains one for any discrete model). Nothing here is imported when
sampling."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies in bf16 in hardware: GPUs that support it, CPUs with AVX512-BF16 or AMX.

    Elsewhere bf16 autocast is emulated, many times slower than fp32, so the trainers autocast to bf16 by
    default only where this holds."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up with a fallback
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False
