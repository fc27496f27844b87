"""`embx select`: base-model candidates compared on a spec's data (registered by runner.cli).

Exit codes as everywhere: 0 ok, 1 a candidate (or the tuning it led to) failed and was recorded as failed,
2 bad input (spec, data, store; an API model chosen for --tune), 130 interrupted.
"""

from __future__ import annotations

import sys

import click

from runner.cli_common import call_recorded, db_option, load_spec_or_exit, set_option, setup_logging


@click.command("select")
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@db_option
@click.option("--tune", is_flag=True, default=None, help="Then fine-tune the chosen candidate (as select.then: tune).")
@click.option("--candidate", "choose", default=None, metavar="LABEL", help="Tune this candidate, not the recommended.")
@click.option("--force", is_flag=True, help="Run candidates again (stored base scores are reused).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def select(
    spec: str,
    overrides: tuple[str, ...],
    db: str | None,
    tune: bool | None,
    choose: str | None,
    force: bool,
    verbose: bool,
) -> None:
    """Compare SPEC's `select:` candidates on its data (one run each, stage base), print the table.

    Exit 1 when a candidate failed (the others are still evaluated and shown), 2 for bad input.
    """
    from runner import store

    loaded = load_spec_or_exit(spec, overrides)
    setup_logging(verbose)
    from runner.data.types import DataError
    from runner.select import SelectError, select_models
    from runner.summary import print_selection

    db = db or store.default_db()

    def work():
        store.reap_stale(db)
        return select_models(loaded, db, force=force, tune=tune, choose=choose)

    result = call_recorded(work, bad_input=(store.StoreError, SelectError, DataError), what="select")
    print_selection(result, db)
    if result.failed or (result.tuned is not None and result.tuned.failed):
        sys.exit(1)
