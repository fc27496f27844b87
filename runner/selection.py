"""The selection table: base-model candidates side by side, read from their selection runs in the store.

One row per candidate (its newest ok run; the newest run when none is ok): the test metrics with a 95%
bootstrap interval of the main one, a paired test against the leader, and the fit and cost figures the
selection run measured (dimensions, input length and truncation, speed, index size, API cost, languages).
The recommendation is computed by a stated rule, never written by hand. The terminal (`embx select`) and the
report render the same :class:`SelectionTable`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runner.records import BASE, NATIVE, SELECT_PREFIX, TEST
from runner.stats import ALPHA, mean_interval, paired_test

RULE = (
    "among the candidates not significantly worse than the leader on test {main} (paired permutation test, "
    f"p >= {ALPHA:g}), the cheapest to embed the corpus once and serve a month of queries, then the fastest "
    "to encode, then the smallest index"
)


@dataclass
class CandidateRow:
    """One candidate in the table (figures from its selection run's `info.select`)."""

    label: str
    kind: str
    status: str
    run_id: str
    error: str | None = None
    model: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    interval: tuple[float, float] | None = None
    """95% bootstrap interval of the main metric's mean over the test queries."""
    vs_leader: dict[str, float] | None = None
    """Paired test of this candidate against the leader (mean_diff, p_value, ci_low, ci_high, n)."""
    tied: bool = False
    """Not significantly worse than the leader."""
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_total(self) -> float:
        """Projected cost of embedding the corpus once plus a month of queries (0 for local models)."""
        cost = self.profile.get("cost") or {}
        return float(cost.get("corpus_once") or 0.0) + float(cost.get("per_month") or 0.0)

    @property
    def texts_per_s(self) -> float:
        """Measured encode rate (0 when unknown)."""
        return float((self.profile.get("throughput") or {}).get("texts_per_s") or 0.0)

    @property
    def index_fp32(self) -> float:
        """Index size in bytes at fp32 (infinite when unknown)."""
        return float((self.profile.get("index_bytes") or {}).get("fp32") or float("inf"))


@dataclass
class SelectionTable:
    """The selection of one experiment.

    Attributes:
        experiment: The experiment.
        main: The main metric.
        metrics: Metric names shown, main first.
        rows: Candidates, best main metric first, failed ones last.
        leader: Label of the best candidate by the main metric.
        recommended: Label chosen by :data:`RULE`.
        rule: The rule, spelled out.
        recommendation: Why, in numbers.
        queries: Test queries scored.
        bm25: BM25's test main metric on the same queries, when `eval.retrievers` has bm25.

    """

    experiment: str
    main: str
    metrics: list[str]
    rows: list[CandidateRow]
    leader: str | None = None
    recommended: str | None = None
    rule: str = ""
    recommendation: str = ""
    queries: int = 0
    bm25: float | None = None


def is_selection_run(run: dict[str, Any]) -> bool:
    """Whether a stored run is a selection run (`embx select`) rather than a training run."""
    return str(run.get("variant") or "").startswith(SELECT_PREFIX)


def selection_table(data: dict[str, Any], *, labels: list[str] | None = None) -> SelectionTable | None:
    """The selection table of an experiment's stored rows (:func:`runner.store.load_experiment`).

    Args:
        data: The experiment's rows.
        labels: Only these candidates (the current spec's), in any order; None: every candidate ever selected.

    Returns:
        The table, or None when the experiment has no selection run.

    """
    runs = [r for r in data["runs"] if is_selection_run(r)]
    if labels is not None:
        runs = [r for r in runs if r["variant"].removeprefix(SELECT_PREFIX) in labels]
    if not runs:
        return None
    chosen: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: str(r.get("started_at") or "")):
        label = run["variant"].removeprefix(SELECT_PREFIX)
        if run["status"] == "ok" or chosen.get(label, {}).get("status") != "ok":
            chosen[label] = run
    spec = json.loads(next(iter(chosen.values()))["spec_json"])
    main = spec["eval"]["main"]
    metrics = [main] + [m for m in spec["eval"]["metrics"] if m != main]
    values: dict[str, dict[str, float]] = {}
    bm25: dict[str, float] = {}
    for row in data["metrics"]:
        if row["split"] == TEST and row["stage"] == BASE:
            if row["source"] == NATIVE:
                values.setdefault(row["run_id"], {})[row["name"]] = row["value"]
            elif row["source"] == "bm25" and row["name"] == main:
                bm25[row["run_id"]] = row["value"]
    per_query: dict[str, dict[str, float]] = {}
    for row in data["query_scores"]:
        if row["split"] == TEST and row["stage"] == BASE and row["name"] == main:
            per_query.setdefault(row["run_id"], {})[row["query_id"]] = row["value"]

    rows = []
    for label, run in chosen.items():
        info = run.get("info") or {}
        select = info.get("select") or {}
        row = CandidateRow(
            label=label,
            kind=select.get("kind", "?"),
            status=run["status"],
            run_id=run["run_id"],
            error=run.get("error"),
            model=select.get("model", ""),
            metrics=values.get(run["run_id"], {}),
            profile=select,
        )
        scores = per_query.get(run["run_id"], {})
        if row.status == "ok" and scores:
            mean, low, high = mean_interval(list(scores.values()))
            row.interval = (low, high)
        rows.append(row)
    ok = [r for r in rows if r.status == "ok" and main in r.metrics]
    table = SelectionTable(
        experiment=chosen[next(iter(chosen))]["experiment"], main=main, metrics=metrics, rows=rows, rule=""
    )
    found_bm25 = [bm25[r.run_id] for r in ok if r.run_id in bm25]
    table.bm25 = found_bm25[-1] if found_bm25 else None
    if not ok:
        table.rows = sorted(rows, key=lambda r: r.label)
        return table
    leader = max(ok, key=lambda r: r.metrics[main])
    lead_scores = per_query.get(leader.run_id, {})
    table.queries = len(lead_scores)
    for row in ok:
        mine = per_query.get(row.run_id, {})
        common = sorted(set(mine) & set(lead_scores))
        row.vs_leader = paired_test([lead_scores[q] for q in common], [mine[q] for q in common])
        row.tied = row is leader or not (row.vs_leader["p_value"] < ALPHA and row.vs_leader["mean_diff"] < 0)
    table.leader = leader.label
    table.rule = RULE.format(main=main)
    tied = [r for r in ok if r.tied]
    pick = min(tied, key=lambda r: (r.cost_total, -r.texts_per_s, r.index_fp32, -r.metrics[main], r.label))
    table.recommended = pick.label
    table.recommendation = _because(pick, leader=leader, tied=tied, main=main)
    table.rows = sorted(ok, key=lambda r: -r.metrics[main]) + sorted(
        (r for r in rows if r not in ok), key=lambda r: r.label
    )
    return table


def _because(pick: CandidateRow, *, leader: CandidateRow, tied: list[CandidateRow], main: str) -> str:
    """The recommendation in numbers: what was tied with the leader and what decided."""
    value = pick.metrics[main]
    parts = [f"{pick.label}: {main} {value:.4f}"]
    if pick.interval:
        parts[0] += f" [{pick.interval[0]:.4f}, {pick.interval[1]:.4f}]"
    if pick is leader:
        parts.append("the leader")
    else:
        test = pick.vs_leader or {}
        parts.append(
            f"{test.get('mean_diff', 0.0):+.4f} vs the leader {leader.label} ({leader.metrics[main]:.4f}), "
            f"p = {test.get('p_value', 1.0):.3g}: not significantly worse"
        )
    others = [r.label for r in tied if r is not pick]
    parts.append(f"tied with the leader: {', '.join(others) if others else 'none besides it'}")
    parts.append(f"projected cost {pick.cost_total:.2f} (corpus once + a month of queries)")
    if pick.texts_per_s:
        parts.append(f"{pick.texts_per_s:.1f} texts/s")
    return "; ".join(parts) + "."


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 kB' (decimal units, as index sizes are quoted; rich's formatter), '-' when unknown."""
    if n is None or n == float("inf"):
        return "-"
    from rich.filesize import decimal

    return decimal(int(n))


def _f4(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _speed(throughput: dict[str, Any]) -> str:
    """Texts/s (and tokens/s) of a local model, or texts/s and p50/p95 request latency of an API model."""
    parts = []
    if throughput.get("texts_per_s"):
        parts.append(f"{throughput['texts_per_s']:.1f} texts/s")
    if throughput.get("tokens_per_s"):
        parts.append(f"{throughput['tokens_per_s']:.0f} tok/s")
    if throughput.get("p50_ms") is not None:
        parts.append(f"p50 {throughput['p50_ms']:.0f} ms, p95 {throughput['p95_ms']:.0f} ms")
    return "; ".join(parts) or "-"


def _languages(fit: dict[str, Any]) -> str:
    """Declared languages, and the queries in languages the candidate does not declare."""
    if not fit:
        return "-"
    declared = fit.get("declared")
    text = ",".join(declared) if declared else "not declared"
    undeclared = fit.get("undeclared") or {}
    if undeclared:
        text += "; not declared: " + ", ".join(f"{n} {lang}" for lang, n in sorted(undeclared.items()))
    return text


def selection_cells(table: Any, *, others: int = 2) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The selection's tables as header and cell strings: quality, fit, speed and cost (terminal, report, tests).

    Args:
        table: The :class:`~runner.selection.SelectionTable`.
        others: How many metrics besides the main one the quality table shows.

    """
    main = table.main
    shown = [m for m in table.metrics if m != main][:others]
    out: dict[str, tuple[list[str], list[list[str]]]] = {
        "quality": (["candidate", main, "95% CI", "vs leader", "p", *shown], []),
        "fit": (["candidate", "dim", "max tok", "params", "truncated", "tokens cut", "index fp32", "int8"], []),
        "cost": (["candidate", "speed", "API spent", "corpus once", "a month", "languages"], []),
    }
    for row in table.rows:
        if row.status != "ok":
            out["quality"][1].append([row.label, row.status.upper(), *["-" for _ in out["quality"][0][2:]]])
            continue
        ci = f"[{row.interval[0]:.3f}, {row.interval[1]:.3f}]" if row.interval else "-"
        test = row.vs_leader or {}
        leader = row.label == table.leader
        out["quality"][1].append(
            [
                row.label,
                _f4(row.metrics.get(main)),
                ci,
                "leader" if leader else f"{test.get('mean_diff', 0.0):+.4f}",
                "-" if leader else f"{test.get('p_value', 1.0):.3g}",
                *[_f4(row.metrics.get(m)) for m in shown],
            ]
        )
        p = row.profile
        trunc, sizes, cost = p.get("truncation") or {}, p.get("index_bytes") or {}, p.get("cost") or {}
        approx = "~" if trunc.get("estimated") else ""
        params = p.get("parameters")
        out["fit"][1].append(
            [
                row.label,
                str(p.get("dimensions", "-")),
                str(p.get("max_tokens", "-")),
                f"{params / 1e6:.1f}M" if params else "-",
                f"{approx}{trunc.get('passages_share', 0.0):.1%}",
                f"{approx}{trunc.get('tokens_share', 0.0):.1%}",
                human_bytes(sizes.get("fp32")),
                human_bytes(sizes.get("int8")),
            ]
        )
        out["cost"][1].append(
            [
                row.label,
                _speed(p.get("throughput") or {}),
                f"{cost.get('spent', 0.0):.4f}",
                f"{cost.get('corpus_once', 0.0):.4f}",
                f"{cost.get('per_month', 0.0):.2f}",
                _languages(p.get("languages") or {}),
            ]
        )
    return out
