"""`embx index`, `embx query` and `embx eval-index`: the vector database commands (registered by runner.cli).

Exit codes as everywhere: 0 ok, 2 bad input (unknown run, bad corpus, unreachable database, a collection of
another model), 130 interrupted (an index is resumed by running the same command again).
"""

from __future__ import annotations

import json
import sys

import click

from runner.cli_common import EXIT_BAD_INPUT, db_option, set_option, setup_logging

to_option = click.option(
    "--to",
    "uri",
    default=None,
    metavar="URI",
    help="Vector database: a folder (embedded, no server) or a server URL http://host:port"
    " (default: <store>.vectors beside the results store).",
)


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from runner.data.types import DataError
    from runner.index import IndexInputError
    from runner.spec import SpecError
    from runner.store import StoreError
    from runner.vectordb import VectorDBError

    return DataError, IndexInputError, SpecError, StoreError, VectorDBError


@click.command()
@click.argument("target", metavar="RUN_ID|SPEC")
@click.option("--data", required=True, type=click.Path(), help="BEIR folder (or its corpus.jsonl) or documents folder.")
@to_option
@click.option("--name", default=None, help="Collection name (default: the run id, or <spec name>-base).")
@click.option("--recreate", is_flag=True, help="Drop the collection first and build it from scratch.")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True, help="Passages per write.")
@click.option(
    "--ef-search",
    type=click.IntRange(min=1),
    default=None,
    help="HNSW search breadth kept with the index (default 100): wider is closer to exact search, slower.",
)
@set_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def index(
    target: str,
    data: str,
    uri: str | None,
    name: str | None,
    recreate: bool,
    batch: int,
    ef_search: int | None,
    overrides: tuple[str, ...],
    db: str | None,
    as_json: bool,
) -> None:
    """Encode a corpus with a run's saved model (or a spec's base model) into a vector database.

    Rerunning the same command resumes an interrupted index and changes nothing in a complete one.
    """
    from runner import store

    setup_logging(False)
    from runner.index import build_index

    path = db or store.default_db()
    try:
        report = build_index(
            path,
            target,
            data=data,
            uri=uri,
            name=name,
            recreate=recreate,
            overrides=list(overrides),
            batch=batch,
            ef_search=ef_search,
        )
    except _bad_input_errors() as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("interrupted: what was written stays; rerun the same command to finish the index", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    size = f", {report.size_bytes / 1e6:.1f} MB on disk" if report.size_bytes is not None else ""
    click.echo(
        f"index {report.name} in {report.uri}: {report.passages} passages ({report.encoded} encoded,"
        f" {report.present} already there, {report.removed} stale removed), {report.dim} dimensions,"
        f" {report.model}, {report.seconds:.1f} s{size}"
    )
    for item in report.skipped:
        click.echo(f"skipped {item}", err=True)
    to = f" --to {report.uri}" if uri else ""
    if report.query_run:
        click.echo(
            f"run {report.query_run} has a query adapter: its passages are the base model's, so this is the base "
            f"model's index, shared, not re-indexed; its queries go through the adapter with --run"
        )
        to += f" --run {report.query_run}"
    click.echo(f'query it: embx query {report.name} "your question"{to}')


@click.command()
@click.argument("name", metavar="INDEX")
@click.argument("text")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits to show.")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE", help="Metadata filter (repeatable: all hold).")
@click.option(
    "--run",
    "run",
    metavar="RUN_ID",
    help="Encode the query with this run's saved model: a run with a query adapter searches its base model's "
    "index as it is (no re-indexing). Refused when the run's passages are not the index's.",
)
@to_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def query(
    name: str,
    text: str,
    k: int,
    filters: tuple[str, ...],
    run: str | None,
    uri: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Search an index with the model that built it (or a run's, with --run): hits with scores and sources."""
    from runner import store

    setup_logging(False)
    from runner.index_query import query_index

    try:
        meta, hits = query_index(db or store.default_db(), name, text, uri=uri, k=k, filters=filters, run=run)
    except _bad_input_errors() as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        rows = [{"id": h.meta.get("passage_id"), "score": h.score, "text": h.text, "meta": h.meta} for h in hits]
        model = meta.get("embx_model")
        click.echo(json.dumps({"index": name, "model": model, "query_run": run, "hits": rows}, indent=2))
        return
    through = f"; queries through run {run}" if run else ""
    click.echo(f"{len(hits)} hit(s) from {name} ({meta.get('embx_model')}{through})")
    for rank, hit in enumerate(hits, 1):
        where = hit.meta.get("source", "")
        if hit.meta.get("heading_path"):
            where += f" > {hit.meta['heading_path']}"
        snippet = " ".join(hit.text.split())
        snippet = snippet if len(snippet) <= 100 else snippet[:97] + "..."
        click.echo(f"{rank:>3}. {hit.score:.4f}  {hit.meta.get('passage_id')}  [{where}]\n       {snippet}")


@click.command("eval-index")
@click.argument("target", metavar="RUN_ID|SPEC")
@to_option
@set_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eval_index(target: str, uri: str | None, overrides: tuple[str, ...], db: str | None, as_json: bool) -> None:
    """Score the test split through the vector database's approximate search beside exact search.

    A run's saved model is measured and the figures are stored with the run (shown by `embx show` and the
    report); a spec's base model is measured and printed. Settings: the spec's eval.index (defaults without).
    """
    from runner import store

    setup_logging(False)
    from runner.index import eval_index as measure
    from runner.summary import index_eval_lines

    try:
        figures, run_id = measure(db or store.default_db(), target, uri=uri or None, overrides=list(overrides))
    except _bad_input_errors() as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps({"run_id": run_id, **figures}, indent=2))
        return
    for line in index_eval_lines(figures):
        click.echo(line)
    if run_id:
        click.echo(f"stored with run {run_id} (info.index_eval)")
