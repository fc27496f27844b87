"""Progress bars (rich) for encoding, mining and training; silent when stderr is not a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


@contextmanager
def task(description: str, total: int | None, *, show: bool = True) -> Iterator[tuple[Progress, int]]:
    """A transient progress bar; yields (progress, task id) for ``progress.advance(task_id, n)``.

    With `show` False (or when stderr is not a terminal) nothing is drawn. ``progress.update(task_id,
    note="loss 0.41")`` shows a note after the bar (the training loss).
    """
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        transient=True,
        disable=not (show and console.is_terminal),
    ) as progress:
        yield progress, progress.add_task(description, total=total, note="")
