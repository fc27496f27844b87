"""Device policy: which torch device a run uses, how it is described, and what ``auto`` precision means there.

The bottom of the package: imported by models, evaluation and training alike, importing no other embx module.
"""

from __future__ import annotations


def pick_device() -> str:
    """The device `$EMBX_DEVICE` names (set by `--device`), else the best available: cuda, then mps, then cpu.

    Raises:
        ValueError: When the named device is not available here.

    """
    import os

    import torch

    wanted = os.environ.get("EMBX_DEVICE")
    if wanted:
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        if (wanted == "cuda" and not torch.cuda.is_available()) or (wanted == "mps" and not mps):
            raise ValueError(f"device {wanted} was asked for (--device / EMBX_DEVICE), but it is not available here")
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def use_device(name: str) -> None:
    """Make this process run on `name` (cpu, cuda, cuda:N or mps): `pick_device` then returns it.

    Call it before torch is imported: cuda:N makes GPU N (of those CUDA_VISIBLE_DEVICES lists) the only one
    this process sees, so everything that says "cuda" uses it.

    Raises:
        ValueError: For a name that is not a device, or a device this machine does not have.

    """
    import os
    import re

    found = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", name)
    if not found or (found.group(2) is not None and found.group(1) != "cuda"):
        raise ValueError(f"--device {name}: expected cpu, cuda, cuda:N or mps")
    if found.group(2) is not None:
        index, visible = int(found.group(2)), os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(index + 1)]
        if index >= len(ids):
            raise ValueError(f"--device {name}: CUDA_VISIBLE_DEVICES={visible} lists {len(ids)} GPU(s)")
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[index]
    os.environ["EMBX_DEVICE"] = found.group(1)
    pick_device()  # raises when it is not there


def describe_device(device: str) -> str:
    """Human-readable device, e.g. ``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: 2 threads``."""
    import torch

    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"{device}: {torch.get_num_threads()} threads"


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX), where bf16 autocast pays off."""
    import torch

    checker = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(checker and checker())


def resolve_precision(precision: str, device: str, inference: bool = False) -> str:
    """Turn ``auto`` into fp32/bf16/fp16 for the device.

    auto on CUDA: bf16 where supported, else fp16 (fp16 for inference, `inference`, which has more mantissa
    bits and is supported everywhere); on CPU bf16 with AMX matrix units, else fp32. fp16 needs CUDA.
    """
    import torch

    if device != "cuda":
        if precision == "fp16":
            raise ValueError(f"precision fp16 needs a CUDA GPU; this run is on {device}")
        if precision == "auto":
            return "bf16" if device == "cpu" and cpu_has_bf16_matrix_units() else "fp32"
        return precision
    if precision == "auto":
        if inference:
            return "fp16"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def inference_settings(device: str, batch_size: int | None, precision: str) -> tuple[int, str]:
    """Resolve ``eval.batch_size`` (None: 512 on GPUs, 64 elsewhere) and ``eval.precision`` for `device`."""
    return batch_size or (512 if device == "cuda" else 64), resolve_precision(precision, device, inference=True)
