"""runner.train: the precision each device gets (auto, and explicit bf16 on any CPU), the backend registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import auto_cpu_precision, force_amx, unavailable

from runner.train import get_backend, resolve_precision


@pytest.mark.parametrize(("amx", "auto"), [(True, "bf16"), (False, "fp32")])
def test_cpu_precision_with_and_without_amx(monkeypatch, amx, auto):
    """On CPU, auto is bf16 only with AMX matrix units; an explicit bf16 or fp32 is kept on any CPU; fp16 needs
    CUDA."""
    force_amx(monkeypatch, amx)
    assert resolve_precision("auto", "cpu") == auto
    assert resolve_precision("auto", "cpu", inference=True) == auto
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize(("amx", "batch"), [(True, 32), (False, 16)])
def test_the_default_inference_batch_follows_the_precision_on_cpu(monkeypatch, amx, batch):
    """eval.batch_size null: on CPU 16 in fp32 and 32 in bf16 (smaller batches measured faster there), 512 on
    CUDA, 64 on mps; an explicit size is kept everywhere."""
    from runner.device import inference_settings

    force_amx(monkeypatch, amx)
    assert inference_settings("cpu", None, "auto") == (batch, "bf16" if amx else "fp32")
    assert inference_settings("cpu", None, "fp32") == (16, "fp32")
    assert inference_settings("cpu", None, "bf16") == (32, "bf16")
    assert inference_settings("mps", None, "fp32") == (64, "fp32")
    assert inference_settings("cpu", 8, "fp32") == (8, "fp32")
    assert inference_settings("cuda", None, "fp16") == (512, "fp16")


@pytest.mark.parametrize(("bf16_supported", "train"), [(True, "bf16"), (False, "fp16")])
def test_cuda_precision(monkeypatch, bf16_supported, train):
    """On CUDA, auto trains in bf16 where the GPU supports it (else fp16) and always infers in fp16."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert resolve_precision("auto", "cuda") == train
    assert resolve_precision("auto", "cuda", inference=True) == "fp16"
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_amx_detection_agrees_with_the_kernels_cpu_flags():
    """The AMX detector says what the kernel's CPU flags say (amx_bf16), so auto is bf16 exactly on AMX CPUs."""
    if not Path("/proc/cpuinfo").exists():
        unavailable("no /proc/cpuinfo on this system")
    assert resolve_precision("auto", "cpu") == auto_cpu_precision()


def test_unknown_backend():
    """A backend name nobody registered is an error naming it."""
    with pytest.raises(ValueError, match="unknown training backend 'nope'"):
        get_backend("nope")
