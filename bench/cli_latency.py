"""How long the light commands take from a cold interpreter: `embx --help` and `embx validate` (issue #21's goals).

    python bench/cli_latency.py                      # bench/results/cli_latency_cpu.json
    python bench/cli_latency.py --repeats 15

Each command runs `--repeats` times as a fresh process (the `embx` console script beside this interpreter),
after one untimed warm-up that fills the OS file cache; the median and the slowest wall time are recorded, with
the goals (--help under 0.3 s, validate under 0.5 s). For the slowest command, ``python -X importtime`` names the
modules whose imports cost the most (cumulative microseconds), which is where a miss would be fixed. The machine
and its load average at the start and the end are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from machine import cpu_info  # noqa: E402

COMMANDS = {
    "embx --help": (["--help"], 0.3),
    "embx validate specs/medical.yaml": (["validate", "specs/medical.yaml"], 0.5),
}


SCRIPT = Path(sys.executable).parent / "embx"
"""The console script pip installed beside this interpreter (what a user types), else ``python -m runner.cli``."""


def _time(args: list[str]) -> float:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "runner.cli"]
    started = time.perf_counter()
    subprocess.run([*command, *args], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started


def _import_costs(args: list[str], top: int = 8) -> list[dict]:
    """The modules with the largest cumulative import time (python -X importtime), top first."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "runner.cli", *args], cwd=ROOT, capture_output=True, text=True
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative_us, name = line.split(":", 1)[1].split("|")
        if name.startswith("  "):  # indented: imported by another module, counted in its parent's figure
            continue
        rows.append({"module": name.strip(), "cumulative_ms": round(int(cumulative_us) / 1000, 1)})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cli_latency_cpu.json")
    args = parser.parse_args()
    load_start = os.getloadavg()
    rows = []
    for name, (argv, goal) in COMMANDS.items():
        _time(argv)  # warm-up
        seconds = [_time(argv) for _ in range(args.repeats)]
        median = statistics.median(seconds)
        rows.append(
            {
                "command": name,
                "median_s": round(median, 3),
                "max_s": round(max(seconds), 3),
                "goal_s": goal,
                "met": median < goal,
                "imports": _import_costs(argv),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": "python bench/cli_latency.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": cpu_info(),
        "python": sys.version.split()[0],
        "script": str(SCRIPT) if SCRIPT.exists() else "python -m runner.cli",
        "repeats": args.repeats,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "commands": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
