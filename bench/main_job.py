"""The main job as a new user runs it: `embx run specs/medical.yaml`, timed, with its metrics and machine.

Runs the command in a fresh folder (its own results store and runs/ folder, so no cached corpus embeddings
from earlier runs), then reads the run back with `embx show RUN --json` and writes one result file:

    python bench/main_job.py --out bench/results/main_job_cpu.json [--set train.precision=fp32 ...]

The wall time is the whole command (model load, data checks, base evaluation, mining, training, evaluation).
Run it on a quiet machine: it is a speed figure.

`--avx2` approximates a CPU without AMX or AVX-512 on a machine that has them: torch's own kernels, oneDNN and
MKL are each capped at AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) and
`precision: auto` is given fp32, as it resolves on such CPUs. The cores, clock and caches stay this machine's, so
it is an estimate of an AVX2-only machine, not a measurement of one; the result file says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import AVX2_ONLY, cpu_info  # noqa: E402


def main() -> None:
    """Parse arguments, run the main job once, write the result file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "medical.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="embx run --set KEY=VALUE")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--workdir", type=Path, help="Run here and keep the store and the saved model (default: a temp dir)"
    )
    parser.add_argument("--avx2", action="store_true", help="cap every CPU kernel library at AVX2, fp32 (see above)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.avx2:
        env.update(AVX2_ONLY)
        args.overrides = ["train.precision=fp32", "eval.precision=fp32", *args.overrides]
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embx-main-job-") as temp:
        folder = str(args.workdir or temp)
        db = Path(folder) / "results.duckdb"
        command = [sys.executable, "-m", "runner.cli", "run", args.spec, "--db", str(db)]
        for item in args.overrides:
            command += ["--set", item]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"embx run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        listed = subprocess.run(
            [sys.executable, "-m", "runner.cli", "ls", "--db", str(db), "--json"], capture_output=True, text=True
        )
        run_id = json.loads(listed.stdout)[0]["run_id"]
        shown = subprocess.run(
            [sys.executable, "-m", "runner.cli", "show", run_id, "--db", str(db), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
    run = json.loads(shown.stdout)
    result = {
        "command": "embx run specs/medical.yaml" + "".join(f" --set {o}" for o in args.overrides),
        "wall_seconds": round(wall, 1),
        "machine": cpu_info(),
        "emulated": {"as": "AVX2-only CPU, fp32", "env": AVX2_ONLY} if args.avx2 else None,
        "precision": run["info"]["train"]["precision"],
        "test": run["metrics"],
        "dev": run["metrics_by_split"].get("dev"),
        "train": run["info"]["train"],
        "timings": run.get("timings"),
        "versions": run.get("versions"),
        "git_commit": run.get("git_commit"),
        "run_id": run_id,
        "saved_model": run["info"].get("saved_model"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    base, tuned = run["metrics"]["base"]["ndcg@10"], run["metrics"]["tuned"]["ndcg@10"]
    print(f"{result['command']}: {wall:.1f} s, test ndcg@10 {base:.4f} -> {tuned:.4f} ({result['precision']})")


if __name__ == "__main__":
    main()
