"""Multi-process training through torchrun (torch.distributed.run), driven by the `embx run` process.

The `embx run` process of node 0 (the leader) prepares everything once: data, negatives, the base model's
scores. For training it writes a job folder (resolved spec, pairs, dev split, base model), starts
``python -m torch.distributed.run ... -m runner.train.worker JOB`` and waits; rank 0 of the workers saves the
tuned model and the training outcome there, and the leader evaluates and records as for a one-process run.
On other machines, `embx run` (the follower) only waits for the leader's jobs in the shared workdir and starts
torchrun for each with its node rank. A rank that dies takes the whole job down (torchrun stops the others);
the leader raises :class:`TrainingFailed` naming the rank, so the run is recorded as failed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from runner.train.base import TrainOutcome

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.data.types import Pair
    from runner.scoring import RetrievalEvaluator
    from runner.spec import DistributedSpec, Spec

log = logging.getLogger(__name__)

JOBS = "jobs"
DONE = "done"
FAULT_ENV = "EMBX_FAULT_RANK"
"""Fault injection for tests and drills: the worker of this global rank kills itself (SIGKILL) before training."""


class TrainingFailed(RuntimeError):
    """The distributed training job failed; the message names the rank(s) and their errors."""


def write_job(
    folder: Path, *, model: SentenceTransformer, pairs: list[Pair], spec: Spec, dev: RetrievalEvaluator | None
) -> None:
    """Write what the training processes need: spec, pairs, the base model and the dev split."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(spec.resolved_json(), encoding="utf-8")
    with (folder / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    if dev is not None:
        # the evaluator itself, settings and filter included: the training ranks score dev exactly as one process
        (folder / "dev.json").write_text(json.dumps(dev.to_json(), ensure_ascii=False), encoding="utf-8")
    model.save(str(folder / "base"))


def torchrun_command(cfg: DistributedSpec, job: Path) -> list[str]:
    """The torchrun command line that starts this node's training processes for `job`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={cfg.nproc_per_node}",
        f"--nnodes={cfg.nnodes}",
        f"--node-rank={cfg.node_rank}",
        f"--master-addr={cfg.master_addr}",
        f"--master-port={cfg.master_port}",
        "--max-restarts=0",
        "-m",
        "runner.train.worker",
        str(job),
    ]


def _run_torchrun(cfg: DistributedSpec, job: Path) -> tuple[int, str]:
    """Run torchrun for `job` in its own process group; on Ctrl-C/SIGTERM stop it and every worker."""
    command = torchrun_command(cfg, job)
    log.info("training on %d process(es) x %d node(s): %s", cfg.nproc_per_node, cfg.nnodes, " ".join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # Read back through the open file: on a follower node the leader may remove the job folder as soon as its own
    # part ends, before this node's torchrun has exited.
    with (job / f"torchrun-node{cfg.node_rank}.log").open("w+", errors="replace") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        out.seek(0)
        return code, out.read()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher's process group (torchrun forwards it to the workers), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _failure(job: Path, code: int, output: str) -> str:
    """Why the job failed: each failed rank's own error, else torchrun's summary of the first failure."""
    reasons = []
    for path in sorted(job.glob("error-rank*.txt")):
        rank = path.stem.removeprefix("error-rank")
        lines = [ln for ln in path.read_text(errors="replace").strip().splitlines() if ln.strip()]
        reasons.append(f"rank {rank}: {lines[-1] if lines else 'failed'}")
    died = sorted(set(_dead_ranks(output)) - {r.split(":")[0].removeprefix("rank ") for r in reasons})
    reasons += [f"rank {rank}: {why}" for rank, why in _dead_ranks(output).items() if rank in died]
    if not reasons:
        reasons.append(f"torchrun exited with code {code}")
    message = "distributed training failed: " + "; ".join(reasons)
    if not any(job.glob("error-rank*.txt")):  # no Python traceback: show what the processes printed last
        crash = [ln.strip() for ln in output.splitlines() if "what():" in ln or "Error" in ln][-3:]
        message += "".join(f"\n  {ln}" for ln in crash)
    return message + f"\n(logs: {job})"


def _dead_ranks(output: str) -> dict[str, str]:
    """Ranks that torchrun reports as failed, with their exit code or signal."""
    import re

    found = {}
    for block in re.split(r"\n\s*\[\d+\]:\n|\nRoot Cause.*?\n", output):
        rank = re.search(r"rank\s*:\s*(\d+)", block)
        code = re.search(r"exitcode\s*:\s*(-?\d+)(?:\s*\(pid: \d+\))?", block)
        sig = re.search(r"Signal (\d+) \((\w+)\) received by PID", block)
        if rank and (code or sig):
            if sig:
                found[rank.group(1)] = f"died ({sig.group(2)})"
            else:
                value = int(code.group(1))
                found[rank.group(1)] = f"died ({signal.Signals(-value).name})" if value < 0 else f"exit code {value}"
    return found


def launch(
    model: SentenceTransformer, *, pairs: list[Pair], spec: Spec, dev: RetrievalEvaluator | None, folder: Path
) -> TrainOutcome:
    """Train through torchrun on the leader node and return the outcome with the tuned model loaded.

    Args:
        model: The base model (saved for the workers; the tuned one is loaded back in its place).
        pairs: Training pairs with their negatives.
        spec: The run's spec; ``train.distributed`` says how many processes and machines.
        dev: The dev split's evaluator for per-epoch scoring, or None.
        folder: Job folder (under ``distributed.workdir`` when several machines share it).

    Raises:
        TrainingFailed: When any rank fails; every process of the job is stopped first.

    """
    from runner.models import load_model

    cfg = spec.train.distributed
    write_job(folder, model=model, pairs=pairs, spec=spec, dev=dev)
    if cfg.nnodes > 1:
        _announce(Path(cfg.workdir), folder)
    code, output = _run_torchrun(cfg, folder)
    outcome_file = folder / "outcome.json"
    if code != 0 or not outcome_file.exists():
        raise TrainingFailed(_failure(folder, code, output))
    data = json.loads(outcome_file.read_text())
    tuned = load_model(spec.model, model.device.type, location=str(folder / "tuned"))
    data["log"] = [tuple(row) for row in data["log"]]
    shutil.rmtree(folder, ignore_errors=True)  # kept only when the job failed, for its logs
    return TrainOutcome(model=tuned, **data)


@contextmanager
def follower_session(spec: Spec) -> Iterator[None]:
    """On a multi-node leader, open a session of training jobs for the follower nodes and close it at the end."""
    cfg = spec.train.distributed
    if cfg.nnodes == 1:
        yield
        return
    start_session(Path(cfg.workdir))
    try:
        yield
    finally:
        finish(Path(cfg.workdir))


def start_session(workdir: Path) -> None:
    """Leader: begin a new session of jobs in the shared workdir (earlier announcements are cleared)."""
    import secrets

    jobs = workdir / JOBS
    shutil.rmtree(jobs, ignore_errors=True)
    jobs.mkdir(parents=True)
    (jobs / ".session.tmp").write_text(secrets.token_hex(8))
    (jobs / ".session.tmp").rename(jobs / "session")


def _announce(workdir: Path, folder: Path) -> None:
    """Leader: tell follower nodes about a new job, as jobs/<n>.json numbered in order."""
    jobs = workdir / JOBS
    n = len(list(jobs.glob("*.json")))
    tmp = jobs / f".{n}.tmp"
    tmp.write_text(json.dumps({"job": str(folder.resolve())}))
    tmp.rename(jobs / f"{n}.json")


def finish(workdir: Path) -> None:
    """Leader: tell follower nodes that this session has no more jobs."""
    jobs = workdir / JOBS
    if (jobs / "session").exists():
        (jobs / DONE).write_text((jobs / "session").read_text())


def _session(jobs: Path) -> str | None:
    """The current session token, unless that session is already done."""
    try:
        token = (jobs / "session").read_text()
    except FileNotFoundError:
        return None
    done = jobs / DONE
    if done.exists() and done.read_text() == token:
        return None
    return token


def follow(cfg: DistributedSpec, poll_s: float = 1.0, timeout_s: float | None = None) -> int:
    """A follower node's loop: start torchrun with this node's rank for each job the leader announces.

    Waits for a session the leader has started and not finished, takes part in each of its jobs in order and
    returns when the leader says it is done.

    Returns:
        The number of jobs this node took part in.

    Raises:
        TimeoutError: When the leader announces nothing within `timeout_s`.

    """
    jobs = Path(cfg.workdir) / JOBS
    token, n, waited = None, 0, 0.0
    while True:
        if token is None:
            token = _session(jobs)
        elif (job_file := jobs / f"{n}.json").exists():
            job = Path(json.loads(job_file.read_text())["job"])
            code, _ = _run_torchrun(cfg, job)
            log.info("job %d (%s) ended with code %d", n, job.name, code)
            n, waited = n + 1, 0.0
            continue
        elif (jobs / DONE).exists() and (jobs / DONE).read_text() == token:
            return n
        if timeout_s is not None and waited > timeout_s:
            raise TimeoutError(f"no job from the leader in {jobs} within {timeout_s:.0f} s")
        time.sleep(poll_s)
        waited += poll_s
