"""Reading the results store for the read-only commands (`ls`, `show`, `gc`, `report`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from runner.cli_common import EXIT_BAD_INPUT

T = TypeVar("T")


def read_store(fn: Callable[[str], T], db: str | None, *more: str) -> T:
    """Call fn(path) of a read-only command: it never writes (no stale-run sweep: those runs show as `stale?`).

    A store that cannot be read is an error (exit 2); run results waiting in recovery files get a note.
    """
    from runner import store

    path = db or store.default_db()
    try:
        value = fn(path)
    except (store.StoreError, FileNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    for each in (path, *more):
        if waiting := store.pending_recoveries(each):
            click.echo(
                f"note: {len(waiting)} run(s) wait in {store.recovery_dir(each)} (saved there when {each} could not be"
                " written); the next `embx run` or `embx search` imports them",
                err=True,
            )
    return value
