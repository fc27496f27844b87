"""Terminal output of runs: the base-vs-tuned table, run listings and one run's details (rich)."""

from __future__ import annotations

import math
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def _console() -> Console:
    """Standard output: rich on a terminal; when piped (nohup, SLURM, CI logs) lines are never wrapped."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=10_000, soft_wrap=True)


out = _console()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def metric_table(title: str, base: dict[str, float], tuned: dict[str, float], main: str | None) -> Table:
    """Metric | base | tuned | delta, the main metric in bold."""
    table = Table(title=title)
    for col in ("metric", "base", "tuned", "delta"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name in tuned or base:
        b, t = base.get(name), tuned.get(name)
        delta = "-" if b is None or t is None else f"{t - b:+.4f}"
        colour = "" if b is None or t is None else ("green" if t > b else "red" if t < b else "")
        label = f"[bold]{name}[/]" if name == main else name
        table.add_row(label, _fmt(b), _fmt(t), f"[{colour}]{delta}[/]" if colour else delta)
    return table


def print_result(result: Any, db: str) -> None:
    """The end of `embx run`: metrics table, data/negatives/training facts, warnings."""
    out.print(
        metric_table(
            f"{result.experiment}: test",
            result.metrics.get("base", {}),
            result.metrics.get("tuned", {}),
            result.main,
        )
    )
    if result.dev:
        dev_b, dev_t = result.dev.get("base", {}), result.dev.get("tuned", {})
        if result.main in dev_t:
            out.print(f"dev {result.main}: base {_fmt(dev_b.get(result.main))} -> tuned {_fmt(dev_t[result.main])}")
    if result.other:
        table = Table(title=f"test {result.main} by retriever / evaluator")
        for col in ("source", "base", "tuned", "delta"):
            table.add_column(col, justify="left" if col == "source" else "right")
        dense = result.metrics
        for source, stages in {"dense": dense, **result.other}.items():
            b, t = stages.get("base", {}).get(result.main), stages.get("tuned", {}).get(result.main)
            table.add_row(source, _fmt(b), _fmt(t), "-" if b is None or t is None else f"{t - b:+.4f}")
        out.print(table)
    info = result.info
    data, neg, train = info.get("data", {}), info.get("negatives", {}), info.get("train", {})
    out.print(
        f"data: {data.get('train_pairs')} training pairs, corpus {data.get('corpus')}; negatives: {neg.get('mode')}"
        + (
            f" x{neg.get('per_query')} (dropped {neg.get('dropped_positive')} known positives,"
            f" {neg.get('dropped_margin')} within margin; {neg.get('filled_random')} random fills)"
            if neg.get("mode") == "hard"
            else ""
        )
    )
    out.print(
        f"train: {train.get('epochs_run')} epoch(s), best epoch {train.get('best_epoch')}, "
        f"{train.get('samples_per_s')} training samples/s (dev scoring excluded), "
        f"{train.get('precision')} on {info.get('device')}; "
        f"total {result.timings.get('total', 0):.1f} s"
    )
    probe = info.get("lr_probe")
    if probe:
        tried = ", ".join(f"{rate} -> {score:.4f}" for rate, score in probe["dev"].items())
        out.print(
            f"learning-rate probe ({probe['pairs']} pairs, one pass each, {probe['seconds']} s): {probe['metric']} "
            f"{tried}; trained at {probe['chosen']:g}"
        )
    if train.get("loop") == "query-adapter":
        base, tuned = result.metrics.get("base", {}).get(result.main), result.metrics.get("tuned", {}).get(result.main)
        gain = "" if base is None or tuned is None else f" ({tuned - base:+.4f})"
        api = (info.get("model") or {}).get("api")
        out.print(
            f"query adapter: test {result.main} {_fmt(base)} -> {_fmt(tuned)}{gain} with the passages embedded by the "
            + (
                f"API model {api}, unchanged (its cached vectors): a corpus indexed with it needs no re-indexing; "
                "embed queries with AdaptedApiEmbedder.load(folder, cache=...).encode(texts, task='query')"
                if api
                else "base model, unchanged: a corpus indexed with the base model needs no re-indexing; embed queries "
                "with encode_query (or encode(..., task='query'))"
            )
        )
    for warning in result.warnings:
        out.print(f"[bold red]WARNING:[/] {warning}")
    saved = info.get("saved_model") or {}
    if saved.get("path"):
        loader = "AdaptedApiEmbedder.load" if (info.get("model") or {}).get("api") else "SentenceTransformer"
        out.print(f"model: {saved['path']}  ({loader}({saved['path']!r}) loads it)")
    if result.info.get("recovery_file"):
        out.print(f"run [bold]{result.run_id}[/]: {db} was locked; results saved to {result.info['recovery_file']}")
    else:
        out.print(f"run [bold]{result.run_id}[/] recorded in {db}")


def print_runs(runs: list[dict[str, Any]]) -> None:
    """`embx ls`: one table per experiment, newest first, that fits 80 columns.

    The run id holds the start time (UTC), so there is no separate column for it; the main metric's tuned value
    and its change against the base model stand for the metrics (`embx show` has them all); a saved model is
    marked (its path: `embx show`).
    """
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_experiment.setdefault(run["experiment"], []).append(run)
    with_models = any(run.get("model") for run in runs)  # the column only when some run saved a model
    for experiment, group in by_experiment.items():
        mains = {run.get("main_metric") for run in group} - {None}
        main = mains.pop() if len(mains) == 1 else "main"
        table = Table(title=experiment, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("run", no_wrap=True)
        table.add_column("variant", overflow="fold")
        table.add_column("status", no_wrap=True)
        table.add_column(main, justify="right", no_wrap=True)
        table.add_column("delta", justify="right", no_wrap=True)
        if with_models:
            table.add_column("model", no_wrap=True)
        for run in group:
            metric = run.get("main_metric")
            base = run["metrics"].get("base", {}).get(metric)
            tuned = run["metrics"].get("tuned", {}).get(metric)
            delta = "-" if base is None or tuned is None else f"{tuned - base:+.4f}"
            status = run["status"] if run["status"] == "ok" else f"[red]{run['status']}[/]"
            variant = run.get("variant") or "base"
            if run.get("study"):
                variant = f"{variant} ({run['study']})"
            value = _fmt(tuned) if main != "main" or metric is None else f"{metric} {_fmt(tuned)}"
            cells = [run["run_id"], variant, status, value, delta]
            table.add_row(*cells, *([_model_cell(run.get("model"))] if with_models else []))
        out.print(table)


def _model_cell(model: dict[str, Any] | None) -> str:
    """The `model` column of `embx ls`: saved, removed, or none."""
    if not model:
        return "-"
    return "removed" if model.get("removed") else "saved"


def print_run(run: dict[str, Any]) -> None:
    """`embx show` output."""
    out.print(f"[bold]{run['run_id']}[/] {run['experiment']} [{run['status']}] started {run['started_at']}")
    if run.get("error"):
        out.print(f"[red]error:[/] {run['error']}")
    out.print(
        f"spec: {run['spec_path']} (hash {run['spec_hash']}), commit {run.get('git_commit')}, device {run['device']}"
    )
    for split, sources in run.get("metrics_by_split", {}).items():
        for source, stages in sources.items():
            out.print(metric_table(f"{split} ({source})", stages.get("base", {}), stages.get("tuned", {}), None))
    if run.get("timings"):
        out.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in run["timings"].items()))
    model = (run.get("info") or {}).get("saved_model")
    if isinstance(model, str):
        out.print(f"model: {model}")
    elif isinstance(model, dict):
        state = f"[yellow]{model['removed']}[/]" if model.get("removed") else f"sha256 {model.get('sha256')}"
        out.print(f"model: {model.get('path')} ({state})")
    if figures := (run.get("info") or {}).get("index_eval"):
        out.print("approximate vs exact search:", highlight=False)
        for line in index_eval_lines(figures):
            out.print(line, highlight=False, markup=False)
    for warning in (run.get("info") or {}).get("warnings", []):
        out.print(f"[bold red]WARNING:[/] {warning}")
    if run.get("train_log"):
        out.print("training log: " + "; ".join(_epoch_lines(run["train_log"])), highlight=False)
    if run.get("spec_text"):
        out.print("spec:", highlight=False)
        out.print(run["spec_text"].rstrip(), markup=False, highlight=False)


def _epoch_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per epoch: the mean logged training loss and the dev metrics scored after it (epoch 0: the base model)."""
    epochs: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        epoch = max(0, math.ceil(row["epoch"]))
        if row["name"] == "loss" or row["name"].startswith("dev_"):
            epochs.setdefault(epoch, {}).setdefault(row["name"], []).append(row["value"])
    return [
        f"epoch {epoch}: "
        + ", ".join(f"{name.replace('_', ' ', 1)} {sum(v) / len(v):.4f}" for name, v in sorted(names.items()))
        for epoch, names in sorted(epochs.items())
    ]


def print_experiment(result: Any, db: str) -> None:
    """The end of `embx run`: one block per run, then (for ablations) a line per variant."""
    for run in result.runs:
        print_result(run, db)
    if len(result.runs) + len(result.skipped) + len(result.failed) <= 1:
        return
    table = Table(title="variants")
    for col in ("variant", "run", "main", "base", "tuned", "delta"):
        table.add_column(col)
    for run in result.runs:
        base, tuned = run.metrics.get("base", {}).get(run.main), run.metrics.get("tuned", {}).get(run.main)
        delta = "-" if base is None or tuned is None else f"{tuned - base:+.4f}"
        label = run.info.get("variant", "")
        table.add_row(label, run.run_id, run.main, _fmt(base), _fmt(tuned), delta)
    for label, run_id in result.skipped:
        table.add_row(label, run_id, "[dim]skipped: already ok[/]", "", "", "")
    for label, error in result.failed:
        table.add_row(label, "", f"[red]failed: {error}[/]", "", "", "")
    out.print(table)
    out.print("report: embx report" + (f" --db {db}" if db != "results.duckdb" else ""))


def print_search(result: Any, db: str) -> None:
    """The end of `embx search`: trials, the best parameters and dev score, and the test metrics of the best spec."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.trials.items()))
    out.print(f"study [bold]{result.study}[/] ({result.storage}): {counts}")
    out.print(f"best trial {result.best_trial}: dev {result.objective} = {result.best_value:.4f}")
    for name, value in result.best_params.items():
        out.print(f"  {name} = {value}")
    out.print(f"best spec written to {result.best_yaml}")
    if result.final is not None:
        print_result(result.final, db)


def print_selection(result: Any, db: str) -> None:
    """The end of `embx select`: the quality and the fit-and-cost tables, the recommendation, failures."""
    table = result.table
    if table is None:
        out.print("no candidate was evaluated")
        return
    titles = {
        "quality": f"{table.experiment}: candidates on test ({table.queries} queries, paired test vs the leader)",
        "fit": "input length and index size (truncated: passages longer than max tok; ~: estimated)",
        "cost": "speed on this machine, API cost (price per million tokens x tokens)",
    }
    from runner.selection import selection_cells

    for name, (head, rows) in selection_cells(table).items():
        if not rows:
            continue
        view = Table(title=titles[name])
        for i, col in enumerate(head):
            left = i == 0 or col == "languages"
            view.add_column(col, justify="left" if left else "right", no_wrap=i == 0)
        for cells in rows:
            view.add_row(*cells)
        out.print(view)
    if table.bm25 is not None:
        out.print(f"bm25 on the same queries: {table.main} {table.bm25:.4f}")
    if table.recommended:
        out.print(f"[bold]recommended: {table.recommended}[/] ({table.recommendation})")
        out.print(f"rule: {table.rule}")
    for row in table.rows:
        if row.status != "ok":
            out.print(f"[bold red]{row.label} {row.status}:[/] {row.error}")
    for label, run_id in result.skipped:
        out.print(f"{label}: already evaluated (run {run_id}); --force runs it again")
    if result.chosen:
        out.print(f"tuned candidate [bold]{result.chosen}[/]:")
        print_experiment(result.tuned, db)
    out.print(f"selection recorded in {db}; `embx report` renders it")


def index_eval_lines(figures: dict) -> list[str]:
    """The figures of an index evaluation as a few lines of text."""
    k = figures["k"]
    size = f"{figures['size_bytes'] / 1e6:.1f} MB" if figures.get("size_bytes") is not None else "n/a (server)"
    return [
        f"{figures.get('model', 'model')}: {figures['passages']} passages, {figures['queries']} test queries,"
        f" {figures['backend']} ({figures['uri']})",
        f"  exact   ndcg@{k} {figures['exact'][f'ndcg@{k}']:.4f}  recall@{k} {figures['exact'][f'recall@{k}']:.4f}",
        f"  ANN     ndcg@{k} {figures['ann'][f'ndcg@{k}']:.4f}  recall@{k} {figures['ann'][f'recall@{k}']:.4f}",
        f"  ANN top-{k} recall vs exact top-{k}: {figures[f'recall_vs_exact@{k}']:.4f}",
        f"  build {figures['build_seconds']:.2f} s, size {size}, query latency p50 {figures['latency_ms']['p50']:.2f}"
        f" ms, p95 {figures['latency_ms']['p95']:.2f} ms",
    ]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def print_plan(plan: Any) -> None:
    """`embx plan`: the variants (done or to run), data sizes, steps and estimated time per stage."""
    out.print(f"[bold]{plan.experiment}[/] on {plan.device}: " + ", ".join(f"{v} {k}" for k, v in plan.sizes.items()))
    stages = list(dict.fromkeys(stage for run in plan.runs for stage in run.seconds))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("variant", "status", "pairs", "steps/epoch", "epochs", *stages, "total"):
        table.add_column(col, justify="left" if col in ("variant", "status") else "right", overflow="fold")
    for run in plan.runs:
        label = run.label + (f" #{run.repeat}" if run.repeat else "")
        if run.done:
            table.add_row(label, f"[dim]done: {run.done}[/]", *[""] * (len(stages) + 4))
            continue
        times = [_duration(run.seconds[s]) if s in run.seconds else "-" for s in stages]
        total = _duration(sum(run.seconds.values())) if run.seconds else "-"
        table.add_row(label, "to run", str(run.pairs), str(run.steps_per_epoch), str(run.epochs), *times, total)
    out.print(table)
    probe = plan.throughput
    if probe.get("train_samples_per_s"):
        how = "cached" if probe.get("cached") else "probed now"
        out.print(
            f"throughput ({how}): encoding {probe['encode_texts_per_s']} texts/s, training"
            f" {probe['train_samples_per_s']} examples/s ({probe['texts_per_example']} texts each,"
            f" {probe['precision']}); model load {probe['load_model_seconds']} s"
        )
    todo = [run for run in plan.runs if not run.done]
    out.print(f"{len(todo)} run(s) to do, {len(plan.runs) - len(todo)} done; estimated {_duration(plan.total_seconds)}")
    for note in plan.notes:
        out.print(f"note: {note}")


def print_init(done: Any) -> None:
    """`embx init`: what was found, the recipe, where the spec went and the next command."""
    plan, found = done.recipe, done.found
    out.print(
        f"{found.source}: " + ", ".join(f"{v} {k}" for k, v in found.counts.items()), highlight=False, markup=False
    )
    for note in found.notes:
        out.print(f"note: {note}", highlight=False, markup=False)
    out.print(
        f"wrote {done.path}: ~{found.train_pairs} training pairs, batch {plan.batch_size}, {plan.epochs} epoch(s) of"
        f" {plan.steps_per_epoch} step(s), {plan.negatives} negatives",
        highlight=False,
        markup=False,
    )
    out.print(f"next: embx run {done.path}", highlight=False, markup=False)
