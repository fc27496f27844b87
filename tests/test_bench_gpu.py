"""The GPU check cannot rot: its whole chain (pack, wheel check, unpack, peer and embx, scaling, table) on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu_in_dry_run(tmp_path):
    """bench/gpu/pack.sh, then bench/gpu/speed_check.sh with DRY_RUN=1: every step the GPU run takes, at toy sizes."""
    env = {**os.environ, "PYTHON": sys.executable, "DEST": str(tmp_path / "pack"), "FP16": str(tmp_path / "fp16")}
    packed = subprocess.run(
        ["bash", "bench/gpu/pack.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert packed.returncode == 0, packed.stdout[-3000:] + packed.stderr[-3000:]
    wheels = sorted(p.name.split("-")[0].lower() for p in (tmp_path / "pack" / "wheels").glob("*.whl"))
    assert "transformers" in wheels and "sentence_transformers" in wheels

    out = tmp_path / "out"
    env = {
        **env,
        "DRY_RUN": "1",
        "OUT": str(out),
        "PACK": str(tmp_path / "pack"),
        "SPEED_WORK": str(tmp_path / "work"),
        "SPEED_NAME": "speed_dry",
    }
    checked = subprocess.run(
        ["bash", "bench/gpu/speed_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    log = checked.stdout[-6000:] + checked.stderr[-3000:]
    assert checked.returncode == 0, log
    assert "(installed here: " in checked.stdout  # each packed wheel checked against this environment
    assert (out / "speed_dry.json").exists() and (out / "exact_scale.json").exists()
    table = checked.stdout.split("== the check, in one table")[1]
    assert "| speed | training samples/s |" in table and "| speed | test NDCG@10 (tuned) |" in table
    assert "exact search, 2,000 passages (cpu)" in table


def test_a_stale_pack_is_refused(tmp_path):
    """A wheel whose version is not the one installed here fails the dry run before anything runs."""
    pack = tmp_path / "pack"
    (pack / "wheels").mkdir(parents=True)
    (pack / "model").mkdir()
    (pack / "model" / "model.safetensors.xz").write_bytes(b"")
    (pack / "financial_qa_10k.tar.xz").write_bytes(b"")
    (pack / "wheels" / "transformers-0.0.1-py3-none-any.whl").write_bytes(b"")
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), "PACK": str(pack)}
    env["SPEED_WORK"] = str(tmp_path / "work")
    checked = subprocess.run(
        ["bash", "bench/gpu/speed_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert checked.returncode != 0
    assert "the pack is stale, rerun bench/gpu/pack.sh: transformers: packed 0.0.1" in checked.stderr
