"""The CPU a benchmark ran on: model name, core count and whether it has bf16 matrix units.

Every bench script that writes a result file records this, so each figure names its machine. bf16 autocast only
pays off on CPUs with AMX (``amx_bf16``), and embx's ``precision: auto`` picks bf16 there and fp32 elsewhere, so a
figure measured on an AMX CPU does not carry over to an AVX2-only one (nor the other way round).

    python bench/machine.py          # prints this machine's record as JSON
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
"""Environment that caps torch's vectorised kernels, oneDNN and MKL at AVX2 (no AVX-512, AMX or VNNI paths): the
bench scripts' `--avx2` estimate of a CPU without them (cores, clock and caches stay this machine's)."""


def read_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """The first ``model name`` and the ``flags`` of a /proc/cpuinfo text (None and an empty set if absent)."""
    name, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name is None:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, logical CPUs, the bf16-related instruction-set flags, and a one-line label.

    Returns:
        ``{"cpu", "cpu_count", "amx_bf16", "avx512_bf16", "flags": {flag: bool}, "label"}``; the flags are None
        where /proc/cpuinfo cannot be read (not Linux).

    """
    try:
        name, flags = read_cpuinfo(cpuinfo.read_text())
        known = True
    except OSError:
        name, flags, known = None, set(), False
    name = name or platform.processor() or platform.machine()
    has = {flag: (flag in flags) if known else None for flag in FLAGS}
    info: dict[str, Any] = {
        "cpu": name,
        "cpu_count": os.cpu_count(),
        "amx_bf16": has["amx_bf16"],
        "avx512_bf16": has["avx512_bf16"],
        "flags": has,
    }
    info["label"] = label(info)
    return info


def label(info: dict[str, Any]) -> str:
    """``Intel(R) Xeon(R) Processor, 2 CPUs, AMX bf16: yes`` (``unknown`` where the flags were not read)."""
    amx = {True: "yes", False: "no", None: "unknown"}[info.get("amx_bf16")]
    return f"{info['cpu']}, {info['cpu_count']} CPUs, AMX bf16: {amx}"


if __name__ == "__main__":
    print(json.dumps(cpu_info(), indent=2))
