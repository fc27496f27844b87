"""Whether the process that recorded a `running` run is still alive (the stale-run check)."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _mark_stale(run: dict[str, Any]) -> dict[str, Any]:
    """Show a `running` run whose process is gone as `stale?` (read-only commands: the row is not changed)."""
    if run.get("status") == "running" and _is_stale(run.get("host"), run.get("pid"), run.get("pid_start")):
        run["status"] = "stale?"
    return run


def process_identity(pid: int) -> str | None:
    """``"<boot id> <pid namespace> <start time>"`` of a live process, from /proc (Linux; None elsewhere).

    The start time is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot): with the boot id it tells a
    process from a later one that got the same pid; the pid namespace tells whether a pid can be checked here
    at all (containers on one machine may share a hostname but not their pids).
    """
    stat = _stat(pid)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return None if stat is None else f"{boot} {namespace} {stat[1]}"


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, or None if there is none (or no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _is_stale(host: str | None, pid: int | None, pid_start: str | None) -> bool:
    """Whether a `running` row's process is certainly gone; False whenever it cannot be told from here.

    Rows of other hosts are not judged. With a recorded identity (see :func:`process_identity`): another boot
    of this host means gone; another pid namespace (another container) cannot be checked; otherwise the pid
    must still run, not as a zombie, and have started at the recorded time (not a reused pid). Rows recorded
    without one (older embx, no /proc) fall back to whether the pid exists.
    """
    if host != platform.node() or pid is None:
        return False
    mine = process_identity(os.getpid()) if pid_start else None
    if not pid_start or mine is None:
        return not process_alive(pid)
    boot, namespace, started = (pid_start.split(" ") + ["", "", ""])[:3]
    my_boot, my_namespace, _ = mine.split(" ")
    if boot != my_boot:
        return True  # this host has restarted since the run began
    if namespace != my_namespace:
        return False  # another container's process: its pid means nothing here
    stat = _stat(pid)
    return stat is None or stat[0] == "Z" or stat[1] != started


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _stat(pid)
    return stat is None or stat[0] != "Z"
