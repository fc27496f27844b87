"""What the `embx` commands share: the exit code of bad input, the --db and --set options, logging set-up."""

from __future__ import annotations

import logging

import click

EXIT_BAD_INPUT = 2

db_option = click.option(
    "--db",
    "db",
    default=None,
    metavar="PATH",
    help="Results store (default: $EMBX_DB or ./results.duckdb).",
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
    """Rich log lines on stderr: embx's own at INFO (DEBUG with `verbose`), noisy libraries at ERROR."""
    import os

    from rich.logging import RichHandler

    os.environ.setdefault("TQDM_DISABLE", "1")  # library tqdm bars; embx draws its own (rich)
    from runner.progress import console

    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    logging.getLogger("runner").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)
