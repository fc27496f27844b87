"""What the `embx` commands share: the exit code of bad input, the --db and --set options, logging set-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import click

T = TypeVar("T")

EXIT_BAD_INPUT = 2

db_option = click.option(
    "--db",
    "db",
    default=None,
    metavar="PATH",
    help="Results store (default: $EMBX_DB or ./results.duckdb).",
)
device_option = click.option(
    "--device",
    default=None,
    metavar="cpu|cuda|cuda:N|mps",
    help="Device to run on (default: cuda, then mps, then cpu).",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec field, e.g. --set train.learning_rate=1e-5 (repeatable).",
)

NOISY = ("transformers", "sentence_transformers", "datasets", "accelerate", "bm25s", "httpx", "openai", "chromadb")
"""Libraries whose log lines below ERROR are hidden."""


def setup_logging(verbose: bool) -> None:
    """Log lines on stderr: embx's own at INFO (DEBUG with `verbose`), noisy libraries at ERROR.

    Through rich on a terminal; with a timestamp each, unwrapped, when stderr is a file or a pipe (nohup, SLURM,
    CI logs).
    """
    import os
    import sys

    os.environ.setdefault("TQDM_DISABLE", "1")  # library tqdm bars; embx draws its own (rich)
    from runner.progress import console

    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])
    logging.getLogger("runner").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)


def load_spec_or_exit(spec_path: str, overrides: tuple[str, ...]):
    """The validated spec (files checked too); every problem printed with file:line and exit 2 when there is one."""
    from runner.spec import SpecError, check_files, load_spec

    try:
        loaded = load_spec(spec_path, list(overrides))
        check_files(loaded)
        return loaded
    except SpecError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)


def use_device_or_exit(device: str | None) -> None:
    """Run on `device` (see :func:`runner.device.use_device`); exit 2 for a bad name or a missing device."""
    if device is None:
        return
    from runner.device import use_device

    try:
        use_device(device)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def recorded(exc: BaseException, sep: str = "\n") -> str:
    """Where the failed run was recorded, as the pipeline found it (nothing when it never got a record)."""
    note = getattr(exc, "embx_recorded", None)
    return f"{sep}({note})" if note else ""


def call_recorded(action: Callable[[], T], *, bad_input: tuple[type[BaseException], ...], what: str) -> T:
    """Call a command's work; its failures become a message and an exit code (the runs are recorded already).

    Exit 2 for `bad_input` (a spec, data or store problem), 130 when interrupted, 1 for any other failure.
    """
    try:
        return action()
    except bad_input as exc:
        click.echo(f"error: {exc}{recorded(exc)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as exc:
        click.echo(f"interrupted{recorded(exc, sep=' ')}", err=True)
        sys.exit(130)
    except Exception as exc:
        logging.getLogger("runner").debug("%s failed", what, exc_info=True)
        click.echo(f"error: {type(exc).__name__}: {exc}{recorded(exc)}", err=True)
        sys.exit(1)
