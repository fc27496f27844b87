"""`embx push-runs`: stored runs copied into an experiment tracker (registered by runner.cli).

Exit codes as everywhere: 0 ok, 2 bad input (a store that cannot be read, an unknown run, MLflow missing or its
tracking server unreachable), 1 any other failure.
"""

from __future__ import annotations

import json
import sys

import click

from runner.cli_common import EXIT_BAD_INPUT, db_option, setup_logging


@click.command("push-runs")
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...")
@click.option("--to", "target", type=click.Choice(["mlflow"]), default="mlflow", show_default=True, help="Tracker.")
@click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="MLflow tracking URI: sqlite:///mlflow.db, http://host:5000 (default: $MLFLOW_TRACKING_URI, else MLflow's).",
)
@click.option("--experiment", default=None, metavar="NAME", help="Only runs of this experiment.")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def push_runs(
    run_ids: tuple[str, ...],
    target: str,
    tracking_uri: str | None,
    experiment: str | None,
    db: str | None,
    as_json: bool,
    verbose: bool,
) -> None:
    """Copy finished runs (all, an experiment's, or RUN_ID...) into MLflow: params, metrics, curves, model.

    Runs already in the tracking store (tag embx.run_id) are skipped, so pushing again adds nothing.
    """
    setup_logging(verbose)
    from runner import store
    from runner.trackers import TrackerError
    from runner.trackers import push_runs as push

    try:
        result = push(
            db or store.default_db(), tracking_uri=tracking_uri, experiment=experiment, run_ids=list(run_ids) or None
        )
    except (TrackerError, store.StoreError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps({"to": target, **vars(result)}, indent=2))
        return
    for run_id, mlflow_id in result.pushed.items():
        click.echo(f"pushed {run_id} -> MLflow run {mlflow_id}")
    click.echo(
        f"{len(result.pushed)} run(s) pushed, {len(result.skipped)} already there, to {target} at {result.tracking_uri}"
    )
