"""Small helpers shared by the test modules (importable because tests/ is on sys.path under pytest)."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
from click.testing import CliRunner

from runner import store
from runner.cli import main


def cli(*args):
    """Invoke `embx` in-process with stringified arguments; exceptions propagate."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Read the store directly (read-only, no stale-run reaping)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def run_record(run_id: str, **fields) -> store.RunRecord:
    """A minimal RunRecord for store-level tests; keyword arguments override its fields."""
    base = {
        "run_id": run_id,
        "experiment": "tests",
        "description": "",
        "spec_path": "/x.yaml",
        "spec_text": "",
        "spec_json": "{}",
        "spec_hash": run_id,
        "overrides": [],
        "versions": {},
        "git_commit": None,
        "device": "cpu",
        "host": "h",
        "pid": 1,
    }
    return store.RunRecord(**{**base, **fields})


class FallingDev:
    """A stand-in for the dev split: returns fixed scores per epoch and keeps a copy of the weights it scored.

    Scores peak at epoch `peak` and fall afterwards, so early stopping must restore that epoch's weights:
    ``snapshots[i]`` holds the model's state after epoch i + 1, the state a backend must hand back.
    """

    def __init__(self, scores: tuple[float, ...] = (0.5, 0.9, 0.7, 0.6, 0.1, 0.1), metric: str = "recall@10"):
        self.scores, self.metric = scores, metric
        self.snapshots: list[dict] = []

    @property
    def peak(self) -> int:
        """The 1-based epoch with the highest score."""
        return self.scores.index(max(self.scores)) + 1

    def __call__(self, model) -> dict[str, float]:
        self.snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
        return {self.metric: self.scores[len(self.snapshots) - 1], "ndcg@10": 0.0}


def same_weights(state: dict, other: dict) -> bool:
    """Whether two state dicts hold the same tensors under the same names (exactly)."""
    import torch

    return state.keys() == other.keys() and all(torch.equal(state[k].cpu(), other[k].cpu()) for k in state)


def unavailable(reason: str):
    """Skip a test whose tool is missing here, but fail it under CI (CI set), where nothing may be skipped."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test (.ci/run installs what it needs)")
    pytest.skip(reason)


def cpu_flags() -> set[str]:
    """The CPU feature flags the Linux kernel reports in /proc/cpuinfo (empty without it)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return set()
    for line in info.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def auto_cpu_precision() -> str:
    """What precision auto must resolve to on this CPU, from the kernel's flags: bf16 with AMX, else fp32."""
    return "bf16" if "amx_bf16" in cpu_flags() else "fp32"


def force_amx(monkeypatch, present: bool) -> None:
    """Make the AMX detector answer `present`, in the module whose resolve_precision consults it."""
    import sys

    from runner.train import resolve_precision

    monkeypatch.setattr(sys.modules[resolve_precision.__module__], "cpu_has_bf16_matrix_units", lambda: present)
