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


CPU_BATCH = {"fp32": 16, "bf16": 32}
"""Default ``eval.batch_size`` on a CPU, by inference precision. Texts are sorted by length, so a batch pads little
at any size, and smaller batches encoded faster: MiniLM over 800 financial_qa_10k passages, 69.1 texts/s at 16
against 52.5 at 64 in fp32 under AVX2 caps, and 203.0 at 32 against 177.4 at 64 in bf16 on AMX (bench/README.md,
"The fp32 path on CPUs without bf16 units"; 64 was the default before)."""


def inference_settings(device: str, batch_size: int | None, precision: str) -> tuple[int, str]:
    """Resolve ``eval.batch_size`` and ``eval.precision`` for `device`.

    A batch size of None becomes 512 on GPUs, :data:`CPU_BATCH` of the precision on a CPU, and 64 on mps.
    """
    resolved = resolve_precision(precision, device, inference=True)
    if batch_size is None:
        batch_size = 512 if device == "cuda" else CPU_BATCH.get(resolved, 64) if device == "cpu" else 64
    return batch_size, resolved
