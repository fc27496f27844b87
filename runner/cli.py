"""The `embx` command line: parse, call one function, print. Heavy imports happen inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from runner import cli_index, cli_push, cli_select
from runner.cli_common import (
    EXIT_BAD_INPUT,
    call_recorded,
    db_option,
    device_option,
    load_spec_or_exit,
    set_option,
    setup_logging,
    use_device_or_exit,
)
from runner.cli_store import read_store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embx")
def main() -> None:
    """embx: declarative fine-tuning and evaluation of embedding models for retrieval."""


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@set_option
def validate(specs: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Check one or more specs; print every problem with file:line:col (exit 2 if any spec has one)."""
    from runner.spec import SpecError, check_files, load_spec

    bad = 0
    for spec in specs:
        try:
            loaded = load_spec(spec, list(overrides))
            check_files(loaded)
        except SpecError as exc:
            click.echo(str(exc), err=True)
            bad += 1
            continue
        click.echo(f"{spec}: ok ({loaded.spec.name}, hash {loaded.spec.spec_hash()})")
        for choice in loaded.spec.recipe_choices:
            click.echo(f"  {choice.line()}")
    if bad:
        if len(specs) > 1:
            click.echo(f"{bad} of {len(specs)} specs have problems", err=True)
        sys.exit(EXIT_BAD_INPUT)


@main.command()
@click.argument("target", type=click.Path(exists=True))
@click.option(
    "-o", "--output", default=None, type=click.Path(dir_okay=False), help="Spec to write (default: NAME.yaml)."
)
@click.option("--base", default="all-MiniLM-L6-v2", show_default=True, help="Base model: alias, folder or hub id.")
@click.option("--eval", "eval_path", default=None, type=click.Path(file_okay=False), help="BEIR folder (JSONL data).")
@click.option("--force", is_flag=True, help="Overwrite an existing spec.")
def init(target: str, output: str | None, base: str, eval_path: str | None, force: bool) -> None:
    """Write a commented spec for TARGET: a folder of documents, a BEIR folder or a FlagEmbedding JSONL file."""
    from runner.scaffold import InitError, init_spec
    from runner.spec import SpecError

    try:
        done = init_spec(target, output=output, base=base, eval_path=eval_path, force=force)
    except (InitError, SpecError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    from runner.summary import print_init

    print_init(done)


@main.command()
@click.option("--markdown", is_flag=True, help="Print the spec reference as Markdown tables instead.")
def schema(markdown: bool) -> None:
    """Print the JSON Schema of spec files (for editor completion)."""
    from runner.spec import json_schema, reference_markdown

    click.echo(reference_markdown() if markdown else json.dumps(json_schema(), indent=2))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@db_option
@click.option("--force", is_flag=True, help="Rerun ablation variants that already have an ok run.")
@click.option("--dry-run", is_flag=True, help="Print the plan (as `embx plan`) and run nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), help="Training processes on this machine (torchrun).")
@click.option("--nnodes", type=click.IntRange(min=1), help="Machines taking part in training.")
@click.option("--node-rank", type=click.IntRange(min=0), help="This machine's rank (0: the one that records).")
@click.option("--master-addr", help="Address of the node-rank 0 machine.")
@click.option("--master-port", type=click.IntRange(1, 65535), help="Free TCP port on the node-rank 0 machine.")
@device_option
def run(
    spec: str,
    overrides: tuple[str, ...],
    db: str | None,
    force: bool,
    dry_run: bool,
    verbose: bool,
    device: str | None,
    **distributed: object,
) -> None:
    """Fine-tune and evaluate as SPEC says (every ablation variant); record each run in the store.

    With --nproc-per-node/--nnodes (or train.distributed in the spec) training runs through torchrun; on
    machines with --node-rank > 0 embx only trains, following node 0's jobs.
    """
    from runner import store

    overrides += tuple(f"train.distributed.{k}={v}" for k, v in distributed.items() if v is not None)
    loaded = load_spec_or_exit(spec, overrides)
    use_device_or_exit(device)
    setup_logging(verbose)
    if dry_run:
        _plan(loaded, db, force=force)
        return
    if loaded.spec.train.distributed.node_rank > 0:
        _follow(loaded.spec)
        return
    from runner.data.types import DataError
    from runner.pipeline import run_experiment
    from runner.summary import print_experiment
    from runner.trackers import TrackerError

    db = db or store.default_db()

    def work():
        store.reap_stale(db)
        return run_experiment(loaded, db, force=force)

    result = call_recorded(work, bad_input=(store.StoreError, DataError, TrackerError), what="run")
    print_experiment(result, db)
    if result.failed:
        sys.exit(1)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@click.option(
    "-o", "--output", default=None, type=click.Path(file_okay=False), help="Folder (default: prepared/<spec name>)."
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def prepare(spec: str, overrides: tuple[str, ...], output: str | None, verbose: bool) -> None:
    """Run only the data stage: write train.jsonl (FlagEmbedding), a BEIR folder and a data card."""
    loaded = load_spec_or_exit(spec, overrides)
    setup_logging(verbose)
    from runner.data.types import DataError
    from runner.pipeline import prepare_data

    out = Path(output or Path("prepared") / loaded.spec.name)
    try:
        card = prepare_data(loaded, out)
    except DataError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    counts = card["counts"]
    click.echo(
        f"wrote {out}/train.jsonl ({counts['train_pairs']} pairs), {out}/beir ({counts['corpus']} passages, "
        f"{counts['queries']} queries), {out}/data_card.md and .json; {len(card['skipped'])} item(s) skipped"
    )
    for note in card["checks"].get("notes", []):
        click.echo(f"check: {note}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@db_option
@click.option("--force", is_flag=True, help="Plan to rerun variants that already have an ok run.")
@device_option
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def plan(spec: str, overrides: tuple[str, ...], db: str | None, force: bool, device: str | None, verbose: bool) -> None:
    """What `embx run SPEC` would do: variants (and which are done), data sizes, steps, time per stage."""
    loaded = load_spec_or_exit(spec, overrides)
    use_device_or_exit(device)
    setup_logging(verbose)
    _plan(loaded, db, force=force)


def _plan(loaded, db: str | None, *, force: bool) -> None:
    from runner import store
    from runner.data.types import DataError
    from runner.plan import make_plan
    from runner.summary import print_plan

    try:
        print_plan(make_plan(loaded, db or store.default_db(), force=force))
    except (DataError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _follow(spec) -> None:
    """A follower node: train in node 0's jobs until it is done; node 0 records the runs."""
    from runner.train.launch import follow

    cfg = spec.train.distributed
    click.echo(f"node {cfg.node_rank} of {cfg.nnodes}: following the jobs of node 0 in {cfg.workdir}")
    try:
        jobs = follow(cfg)
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo(f"node {cfg.node_rank}: node 0 is done; took part in {jobs} training job(s)")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@db_option
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Total trials (default: search.trials).")
@click.option(
    "--storage",
    default=None,
    envvar="EMBX_SEARCH_STORAGE",
    help="Optuna storage: journal file path or RDB URL (postgresql://...); also $EMBX_SEARCH_STORAGE.",
)
@click.option("--study", "study_name", default=None, help="Study name (default: the spec's name).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Local worker processes.")
@click.option("--worker-share", default=None, hidden=True, help="Internal: INDEX:TRIALS for one worker process.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def search(
    spec: str,
    overrides: tuple[str, ...],
    db: str | None,
    trials: int | None,
    storage: str | None,
    study_name: str | None,
    workers: int,
    worker_share: str | None,
    verbose: bool,
) -> None:
    """Optuna search over SPEC's `search:` space: trials scored on dev, the best spec tested once."""
    from runner import store

    loaded = load_spec_or_exit(spec, overrides)
    setup_logging(verbose)
    from runner.search import SearchError, default_storage, run_search, run_worker
    from runner.summary import print_search
    from runner.trackers import TrackerError, preflight

    db = db or store.default_db()
    try:
        preflight(loaded.spec)
        store.reap_stale(db)
        if loaded.spec.train.distributed.world_size > 1:
            raise SearchError("search trials train in one process each: train.distributed is for `embx run`")
        if worker_share:
            index, share = (int(x) for x in worker_share.split(":"))
            if loaded.spec.search is None:
                raise SearchError(f"{spec}: no `search:` section")
            loaded.spec.search.trials = trials or loaded.spec.search.trials
            run_worker(
                loaded,
                db,
                storage_url=storage or default_storage(db),
                study_name=study_name or loaded.spec.name,
                trials=share,
                worker=index,
            )
            return
        result = run_search(
            loaded,
            db,
            trials=trials,
            storage=storage,
            study_name=study_name,
            workers=workers,
            overrides=list(overrides),
        )
    except (SearchError, store.StoreError, TrackerError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    print_search(result, db)


@main.command("ls")
@db_option
@click.option("--experiment", default=None, help="Only runs of this experiment.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(db: str | None, experiment: str | None, as_json: bool) -> None:
    """List runs, newest first."""
    from runner import store
    from runner.summary import print_runs

    runs = read_store(lambda path: store.list_runs(path, experiment), db)
    if as_json:
        click.echo(json.dumps(runs, indent=2, default=str))
    else:
        print_runs(runs)


@main.command()
@click.argument("run_id")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(run_id: str, db: str | None, as_json: bool) -> None:
    """Show one run (RUN_ID or a unique prefix): spec, metrics, training log."""
    from runner import store
    from runner.summary import print_run

    try:
        run = read_store(lambda path: store.get_run(path, run_id), db)
    except KeyError as exc:
        click.echo(f"error: {exc.args[0]}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
    else:
        print_run(run)


@main.command()
@click.option("--experiment", default=None, help="Only this experiment's runs.")
@click.option("--yes", is_flag=True, help="Remove without asking.")
@db_option
def gc(experiment: str | None, yes: bool, db: str | None) -> None:
    """Remove the saved models of runs that are not the best of their experiment (asks first)."""
    from runner import store
    from runner.keep import removable, remove_models

    path = db or store.default_db()
    candidates = read_store(lambda p: removable(p, experiment=experiment), path)
    if not candidates:
        click.echo("nothing to remove: every saved model is its experiment's best")
        return
    for item in candidates:
        click.echo(f"{item.run_id} ({item.experiment}): {item.path}  [best: {item.best_run_id}]")
    if not yes and not click.confirm(f"remove these {len(candidates)} model folder(s)?", default=False):
        click.echo("nothing removed")
        return
    try:
        removed = remove_models(path, experiment=experiment)
    except store.StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"removed {len(removed)} model folder(s)")


@main.command()
@click.option("--db", "dbs", multiple=True, metavar="PATH", help="Results store(s) to read together (repeatable).")
@click.option("--experiment", "experiments", multiple=True, help="Experiment(s); default: the latest (repeatable).")
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False))
def report(dbs: tuple[str, ...], experiments: tuple[str, ...], output: str) -> None:
    """Render the HTML ablation report of one or more experiments."""
    from runner import store
    from runner.report import build_report

    paths = list(dbs) or [store.default_db()]
    try:
        html = read_store(lambda _: build_report(paths, list(experiments)), *paths)
    except KeyError as exc:
        click.echo(f"error: {exc.args[0]}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(html, encoding="utf-8")
    click.echo(f"wrote {output}")


@main.command()
@click.argument("run_id")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Export folder (new or empty).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["sentence-transformers", "onnx", "onnx-int8"]),
    default="sentence-transformers",
    show_default=True,
    help="onnx: fp32 ONNX (O2-optimised); onnx-int8: dynamically quantised for CPUs.",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder (once the new export passed).")
@click.option(
    "--int8-config",
    type=click.Choice(["auto", "arm64", "avx2", "avx512", "avx512_vnni"]),
    default="auto",
    show_default=True,
    help="Quantisation config of onnx-int8 (auto: for this CPU; avx2 runs correctly on any x86-64 CPU).",
)
@click.option("--language", default=None, help="Language code(s) of the card's metadata, e.g. en or en,de.")
@click.option("--license", "license_", default=None, help="License identifier for the card (default: unknown).")
@click.option("--keep-failed", is_flag=True, help="Keep the temporary folder of an export that fails parity.")
@click.option("--push-to-hub", "repo", default=None, metavar="REPO", help="Upload the export to this Hub repository.")
@click.option("--private", is_flag=True, help="Create the Hub repository as private.")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export(
    run_id: str,
    output: str,
    fmt: str,
    overwrite: bool,
    int8_config: str,
    language: str | None,
    license_: str | None,
    keep_failed: bool,
    repo: str | None,
    private: bool,
    db: str | None,
    as_json: bool,
) -> None:
    """Export a run's saved model (RUN_ID or a unique prefix) with a model card and a parity check.

    Exit 2 for bad input (nothing written), 1 when the export does not reproduce the run's embeddings.
    """
    import os

    from runner import store

    setup_logging(False)
    from runner.export import ExportError, ParityError, export_run

    path = db or store.default_db()
    try:
        result = export_run(
            path,
            run_id,
            output=output,
            format=fmt,
            overwrite=overwrite,
            quantization=int8_config,
            language=language,
            license=license_,
            keep_failed=keep_failed,
        )
        if repo:
            from runner.export import push_to_hub

            push_to_hub(path, result, repo=repo, private=private, token=os.environ.get("HF_TOKEN"))
    except (ExportError, store.StoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except ParityError as exc:
        if as_json:
            click.echo(json.dumps(exc.result.as_dict(), indent=2, default=str))
        else:
            _print_parity(exc.result.parity)
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, default=str))
        return
    _print_parity(result.parity)
    loaded = f", file {result.load['file_name']}" if result.load.get("file_name") else ""
    click.echo(f"exported run {result.run_id} as {result.format} to {result.path}{loaded}; card: README.md")
    if result.hub_repo:
        click.echo(f"pushed to the Hub: {result.hub_repo}")


def _print_parity(parity: dict) -> None:
    """One or two lines of parity figures."""
    line = (
        f"parity ({parity['queries']} queries, {parity['passages']} passages): min cosine {parity['min_cosine']:.6f},"
        f" mean {parity['mean_cosine']:.6f}"
    )
    if rank := parity.get("ranking"):
        line += (
            f"; ndcg@10 torch {rank['ndcg@10_torch']:.4f} vs export {rank['ndcg@10_exported']:.4f}"
            f" ({rank['ndcg@10_delta']:+.4f}), top-10 overlap {rank['top10_overlap']:.3f}"
        )
    click.echo(line + f" [{parity['criterion']}: {'ok' if parity['ok'] else 'FAILED'}]")


main.add_command(cli_select.select)
main.add_command(cli_index.index)
main.add_command(cli_index.query)
main.add_command(cli_index.eval_index)
main.add_command(cli_push.push_runs)

if __name__ == "__main__":
    main()
