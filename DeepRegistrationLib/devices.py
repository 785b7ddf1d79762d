"""Device policy: which torch device a run uses, and what a GPU offers (for messages)."""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["resolve_device", "gpu_memory_gb", "is_out_of_memory"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error (no silent fallback)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available (use --device auto or cpu)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def gpu_memory_gb(device: torch.device) -> float:
    """Total memory of a CUDA device in GB (NaN when it cannot be read)."""
    try:
        return torch.cuda.get_device_properties(device).total_memory / 1024**3
    except Exception:  # noqa: BLE001 - only for a message
        return float("nan")


def is_out_of_memory(err: BaseException) -> bool:
    """True for a torch out-of-memory error (CUDA) or a failed host allocation (CPU)."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError)
                                                       and "can't allocate memory" in str(err))
