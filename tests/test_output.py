"""Output that reads well anywhere: piped runs (timestamps, no wrapping), `embx ls` in 80 columns, --device."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import cli

ROOT = Path(__file__).resolve().parents[1]
FAST = {"train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}}
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")


def test_a_piped_run_has_timestamps_no_wrapping_and_names_its_model(write_spec, tmp_path):
    """As under nohup, SLURM or CI: stdout and stderr are pipes."""
    spec = write_spec(name="a-spec-with-a-rather-long-name-so-lines-would-wrap-at-eighty-columns.yaml", **FAST)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-m", "runner.cli", "run", str(spec), "--db", str(tmp_path / "r.duckdb"), "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    logs = proc.stderr.splitlines()
    assert logs and all(STAMP.match(line) for line in logs), logs[:5]
    assert any("epoch 1: training loss" in line for line in logs)
    out = proc.stdout.splitlines()
    # one line each, however long: nothing is wrapped at 80 columns
    (train,) = [line for line in out if line.startswith("train: ")]
    assert "training samples/s" in train and train.rstrip().endswith(" s")
    assert all(line.startswith("WARNING: ") for line in out if "WARNING" in line)
    assert any(len(line) > 80 for line in out)
    (model,) = [line for line in out if line.startswith("model: ")]
    path = model.split()[1]
    assert Path(path).is_dir() and (Path(path) / "modules.json").is_file()
    assert out[-1].startswith("run ") and out[-2] == model  # the saved model in the final lines
    run_id = out[-1].split()[1]
    shown = cli("show", run_id, "--db", tmp_path / "r.duckdb").stdout
    assert re.search(r"training log: epoch 0: dev map@100 0\.\d+, .*; epoch 1: dev map@100 .* loss \d", shown)
    assert "spec:\n" in shown and spec.read_text().rstrip() in shown


def _ls_at(width: int, runs: list[dict], monkeypatch) -> list[str]:
    from rich.console import Console

    import runner.summary

    console = Console(width=width, force_terminal=True, color_system=None, record=True)
    monkeypatch.setattr(runner.summary, "out", console)
    runner.summary.print_runs(runs)
    return console.export_text().splitlines()


def test_ls_fits_80_columns_without_cutting_ids_or_scores(monkeypatch):
    runs = [
        {
            "run_id": f"20261202-15{i:02d}33-d6e21d",
            "experiment": "a-rather-long-experiment-name" if i % 2 else "medical-ablation",
            "variant": variant,
            "status": status,
            "started_at": "2026-12-02 15:28:33",
            "main_metric": "ndcg@10",
            "metrics": {"base": {"ndcg@10": 0.7413}, "tuned": {"ndcg@10": 0.8070 - i / 100}},
            "model": {"path": f"/somewhere/runs/20261202-15{i:02d}33-d6e21d"} if i % 3 else None,
        }
        for i, (variant, status) in enumerate(
            [
                ("base", "ok"),
                ("negatives.mode=in-batch", "ok"),
                ('train.learning_rate=1e-05, negatives.mode="random"', "interrupted"),
                ("data.limit=100", "failed"),
            ]
        )
    ]
    lines = _ls_at(80, runs, monkeypatch)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "…" not in text
    for run in runs:
        assert run["run_id"] in text
    assert "a-rather-long-experiment-name" in text and "medical-ablation" in text  # as table titles
    assert "+0.0657" in text and "0.8070" in text and "interrupted" in text and "saved" in text


def test_device_option_is_checked_before_anything_runs(write_spec, tmp_path, monkeypatch):
    for name in ("EMBX_DEVICE", "CUDA_VISIBLE_DEVICES"):  # --device sets them in this process: undone after
        monkeypatch.setenv(name, "")
    spec = write_spec(**FAST)
    bad = cli("run", spec, "--db", tmp_path / "r.duckdb", "--device", "gpu")
    assert bad.exit_code == 2 and "expected cpu, cuda, cuda:N or mps" in bad.output
    assert not (tmp_path / "r.duckdb").exists()
    import torch

    if not torch.cuda.is_available():
        missing = cli("run", spec, "--db", tmp_path / "r.duckdb", "--device", "cuda:0")
        assert missing.exit_code == 2 and "device cuda was asked for" in missing.output
        assert not (tmp_path / "r.duckdb").exists()
