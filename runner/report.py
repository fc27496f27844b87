"""The HTML ablation report: which choice moved the metric, and is the gain real.

Reads the store through runner.store, compares every variant with the experiment's reference variant on the
test split (per-query paired permutation test and bootstrap confidence interval from scipy), draws charts
with matplotlib (inline SVG, so the page needs no network) and renders templates/report.html (Jinja2,
autoescape on: dataset text is always shown as text).
"""

from __future__ import annotations

import difflib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import store
from runner.charts import curve_chart, factor_charts, merge_chart, search_charts
from runner.selection import is_selection_run, selection_cells, selection_table
from runner.stats import ALPHA, paired_test

log = logging.getLogger(__name__)

__all__ = ["ALPHA", "analyse", "build_report", "conclude", "paired_test"]


@dataclass
class VariantStats:
    """One variant (its repeats pooled) of an experiment."""

    label: str
    changes: dict[str, Any]
    runs: list[dict[str, Any]]
    status: str
    error: str | None = None
    tuned: dict[str, float] = field(default_factory=dict)
    base: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    """stage -> query -> main-metric value, averaged over repeats."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    conclusion: str = ""
    test: dict[str, Any] = field(default_factory=dict)
    spec_diff: str = ""
    setting: str = ""
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What its runs warned about (learned nothing, too few queries, worse than base), shown in red."""
    best_epoch: int | None = None
    """The epoch whose weights were kept (marked on the dev curve)."""


def conclude(what: str, metric: str, ref_value: float, value: float, test: dict[str, float]) -> str:
    """One sentence from the numbers: direction, size, and whether the paired test supports it."""
    delta = value - ref_value
    rel = f" ({delta / ref_value:+.1%})" if ref_value else ""
    if abs(delta) < 1e-12:
        return f"{what}: no change in {metric}."
    verb = "raised" if delta > 0 else "lowered"
    p, lo, hi = test["p_value"], test["ci_low"], test["ci_high"]
    verdict = (
        f"significant at {ALPHA:.0%} (p = {p:.3g}, 95% CI [{lo:+.4f}, {hi:+.4f}])"
        if p < ALPHA
        else f"not significant (p = {p:.3g}, 95% CI [{lo:+.4f}, {hi:+.4f}] includes 0)"
        if lo <= 0 <= hi
        else f"not significant (p = {p:.3g}, 95% CI [{lo:+.4f}, {hi:+.4f}])"
    )
    return f"{what} {verb} {metric} by {abs(delta):.4f}{rel} over {test['n']} test queries: {verdict}."


def _yaml(spec_json: str) -> list[str]:
    from ruamel.yaml import YAML

    buf = io.StringIO()
    YAML(typ="safe").dump(json.loads(spec_json), buf)
    return buf.getvalue().splitlines()


def _examples(data: dict[str, Any], run: dict[str, Any], main: str, n: int = 3) -> dict[str, list]:
    """Queries with the largest gains and losses of the tuned model, with both top-3 lists."""
    rid = run["run_id"]
    dataset = (run.get("info") or {}).get("dataset")
    scores: dict[str, dict[str, float]] = {}
    for row in data["query_scores"]:
        if row["run_id"] == rid and row["name"] == main:
            scores.setdefault(row["query_id"], {})[row["stage"]] = row["value"]
    ranked: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for row in data["rankings"]:
        if row["run_id"] == rid:
            ranked.setdefault((row["stage"], row["query_id"]), []).append((row["rank"], row["doc_id"]))
    texts = {(t["kind"], t["id"]): t["text"] for t in data["texts"] if t["dataset"] == dataset}
    relevant: dict[str, set[str]] = {}
    for q in data["qrels"]:
        if q["dataset"] == dataset and q["grade"] > 0:
            relevant.setdefault(q["query_id"], set()).add(q["doc_id"])
    deltas = sorted(
        ((s["tuned"] - s["base"], q) for q, s in scores.items() if "tuned" in s and "base" in s), key=lambda x: x[0]
    )

    def example(delta: float, qid: str) -> dict[str, Any]:
        rel = relevant.get(qid, set())

        def side(stage: str) -> dict[str, Any]:
            docs = [d for _, d in sorted(ranked.get((stage, qid), []))]
            first = next((i + 1 for i, d in enumerate(docs) if d in rel), None)
            top = [{"id": d, "text": texts.get(("doc", d), ""), "relevant": d in rel} for d in docs[:3]]
            return {"first_relevant": first, "top": top, "score": scores[qid][stage]}

        return {
            "query_id": qid,
            "query": texts.get(("query", qid), qid),
            "delta": delta,
            "relevant": [{"id": d, "text": texts.get(("doc", d), "")} for d in sorted(rel)[:2]],
            "base": side("base"),
            "tuned": side("tuned"),
        }

    gains = [example(d, q) for d, q in reversed(deltas[-n:]) if d > 0]
    losses = [example(d, q) for d, q in deltas[:n] if d < 0]
    return {"gains": gains, "losses": losses}


def _merges(variants: list, main: str) -> list[dict[str, Any]]:
    """The forgetting guard of each variant that ran one: its alpha table and a chart of domain gain vs guard drop."""
    out = []
    for v in variants:
        run = v.runs[-1] if v.runs else None
        merge = ((run or {}).get("info") or {}).get("merge") if v.status == "ok" else None
        if not merge:
            continue
        out.append({"label": v.label, "merge": merge, "chart": merge_chart(merge, main)})
    return out


def _index_evals(variants: list) -> list[dict[str, Any]]:
    """Each ok variant's approximate-vs-exact figures (`eval.index` or `embx eval-index`), newest run's."""
    out = []
    for v in variants:
        found = [(r.get("info") or {}).get("index_eval") for r in v.runs]
        found = next((f for f in reversed(found) if f), None)
        if found:
            out.append({"label": v.label, **found})
    return out


def index_bytes(dim: int) -> dict[str, int]:
    """Bytes a passage's vector takes in an index at `dim` dimensions: fp32, int8 and binary.

    As sentence-transformers' ``quantize_embeddings`` stores them (a test checks it): 4 bytes a dimension, 1 byte
    (int8), 1 bit packed into bytes (ubinary).
    """
    return {"fp32": 4 * dim, "int8": dim, "binary": -(-dim // 8)}


def _matryoshka(variants: list, others: dict[str, dict[str, dict[str, float]]], main: str) -> list[dict[str, Any]]:
    """Quality vs dimensions of each ok variant scored at smaller dimensions (``train.matryoshka_dims``).

    Rows, largest dimension first: the full embedding (the dense scores) then each ``dense@<d>`` source, with the
    main metric of the tuned and the base model and the index bytes per passage.
    """
    out = []
    for v in variants:
        run = v.runs[-1]
        found = others.get(run["run_id"], {})
        dims = sorted((int(source.split("@")[1]) for source in found if source.startswith("dense@")), reverse=True)
        if not dims:
            continue
        full = ((run.get("info") or {}).get("model") or {}).get("dim")  # absent in runs stored before it was
        rows = []
        if full:
            rows.append({"dim": full, "tuned": v.tuned.get(main), "base": v.base.get(main), "bytes": index_bytes(full)})
        for d in dims:
            stages = found[f"dense@{d}"]
            rows.append({"dim": d, "tuned": stages.get("tuned"), "base": stages.get("base"), "bytes": index_bytes(d)})
        out.append({"label": v.label, "rows": rows})
    return out


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Turn one experiment's stored rows into the report's sections (search trials go to the search part)."""
    searches = [{**study, "charts": search_charts(study)} for study in data.get("studies", [])]
    all_runs = data["runs"]
    runs = [r for r in all_runs if not r.get("study") and not is_selection_run(r)]
    selection = selection_table(data)
    spec0 = json.loads((runs or all_runs)[0]["spec_json"])
    main = spec0["eval"]["main"]
    metric_names = spec0["eval"]["metrics"]
    stopping = spec0["train"].get("early_stopping") or {}
    dev_metric = stopping.get("metric", main)

    metrics: dict[str, dict[str, dict[str, float]]] = {}
    # Retrievers and evaluators besides dense on test (bm25, hybrid, two-stage, mteb) and extra evaluation sets.
    others: dict[str, dict[str, dict[str, float]]] = {}
    for m in data["metrics"]:
        if m["split"] == "test" and m["source"] == "native":
            metrics.setdefault(m["run_id"], {}).setdefault(m["stage"], {})[m["name"]] = m["value"]
        elif m["split"] != "dev" and m["name"] == main:
            where = m["source"] if m["split"] == "test" else m["split"]
            others.setdefault(m["run_id"], {}).setdefault(where, {})[m["stage"]] = m["value"]
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for q in data["query_scores"]:
        if q["name"] == main:
            per_query.setdefault(q["run_id"], {}).setdefault(q["stage"], {})[q["query_id"]] = q["value"]
    logs: dict[str, list[dict[str, Any]]] = {}
    for row in data["train_log"]:
        logs.setdefault(row["run_id"], []).append(row)

    by_label: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_label.setdefault(run.get("variant") or "base", []).append(run)
    variants: list[VariantStats] = []
    for label, group in by_label.items():
        ok = [r for r in group if r["status"] == "ok"]
        latest = group[-1]
        v = VariantStats(label, latest.get("changes") or {}, group, "ok" if ok else latest["status"])
        if not ok:
            v.error = latest.get("error")
            variants.append(v)
            continue
        # Pool repeats: the newest ok run per repeat index.
        per_repeat = {r.get("repeat", 0): r for r in ok}
        chosen = list(per_repeat.values())
        v.runs = chosen
        v.warnings = list(dict.fromkeys(w for r in chosen for w in (r.get("info") or {}).get("warnings", [])))
        for stage in ("base", "tuned"):
            names = {n for r in chosen for n in metrics.get(r["run_id"], {}).get(stage, {})}
            values = {
                n: [metrics[r["run_id"]][stage][n] for r in chosen if n in metrics[r["run_id"]].get(stage, {})]
                for n in names
            }
            getattr(v, stage).update({n: sum(x) / len(x) for n, x in values.items() if x})
            queries = {q for r in chosen for q in per_query.get(r["run_id"], {}).get(stage, {})}
            v.per_query[stage] = {
                q: sum(per_query[r["run_id"]][stage][q] for r in chosen) / len(chosen)
                for q in queries
                if all(q in per_query.get(r["run_id"], {}).get(stage, {}) for r in chosen)
            }
        log_rows = logs.get(chosen[0]["run_id"], [])
        v.curves["loss"] = [(r["epoch"], r["value"]) for r in log_rows if r["name"] == "loss"]
        v.curves["dev"] = sorted((r["epoch"], r["value"]) for r in log_rows if r["name"] == f"dev_{dev_metric}")
        v.best_epoch = ((chosen[0].get("info") or {}).get("train") or {}).get("best_epoch")
        variants.append(v)

    reference = next((v for v in variants if v.label == "base" and v.status == "ok"), None)
    reference = reference or next((v for v in variants if v.status == "ok"), None)
    base_model = reference.base.get(main) if reference else None
    factors: dict[str, list[tuple[str, float, bool]]] = {}
    if reference is not None:
        ref_spec = json.loads(reference.runs[0]["spec_json"])
        ref_yaml = _yaml(reference.runs[0]["spec_json"])
        # The reference: tuned vs the untuned base model.
        common = sorted(set(reference.per_query.get("base", {})) & set(reference.per_query.get("tuned", {})))
        reference.test = paired_test(
            [reference.per_query["base"][q] for q in common], [reference.per_query["tuned"][q] for q in common]
        )
        reference.conclusion = conclude(
            "Fine-tuning (reference settings)",
            main,
            reference.base.get(main, 0.0),
            reference.tuned.get(main, 0.0),
            reference.test,
        )
        for v in variants:
            if v.status != "ok":
                continue
            v.spec_diff = "\n".join(
                difflib.unified_diff(ref_yaml, _yaml(v.runs[0]["spec_json"]), "reference", v.label, lineterm="", n=1)
            )
            if v is reference:
                continue
            common = sorted(set(reference.per_query.get("tuned", {})) & set(v.per_query.get("tuned", {})))
            v.test = paired_test(
                [reference.per_query["tuned"][q] for q in common], [v.per_query["tuned"][q] for q in common]
            )
            what = ", ".join(f"{k} {_value_at(ref_spec, k)!r} -> {val!r}" for k, val in v.changes.items())
            v.setting = ", ".join(f"{val} (ref: {_value_at(ref_spec, k)})" for k, val in v.changes.items())
            v.conclusion = conclude(
                what or v.label, main, reference.tuned.get(main, 0.0), v.tuned.get(main, 0.0), v.test
            )
            ref_value = reference.tuned.get(main, 0.0)
            for k, val in v.changes.items():
                if len(v.changes) == 1:
                    factors.setdefault(k, [_point(f"{_value_at(ref_spec, k)} (ref)", ref_value, True, reference.test)])
                    factors[k].append((str(val), v.tuned.get(main, 0.0), False, *_around(ref_value, v.test)))
        for v in variants:
            if v.status != "ok":
                continue
            for name in metric_names:
                ref = reference.base.get(name) if v is reference else reference.tuned.get(name)
                val = v.tuned.get(name)
                if ref is None or val is None:
                    continue
                v.rows.append(
                    {
                        "metric": name,
                        "ref": ref,
                        "value": val,
                        "delta": val - ref,
                        "rel": (val - ref) / ref if ref else None,
                    }
                )
    ok_variants = [v for v in variants if v.status == "ok"]
    best = max(ok_variants, key=lambda v: v.tuned.get(main, float("-inf")), default=None)
    example_run = (best or reference).runs[0] if (best or reference) else None
    first = (runs or all_runs)[0]
    return {
        "selection": selection,
        "selection_cells": selection_cells(selection, others=4) if selection else {},
        "searches": searches,
        "experiment": first["experiment"],
        "description": spec0.get("description", ""),
        "dataset": spec0["data"]["path"],
        # a query adapter over an API model: the API model is the base (its identity, as the run scored it)
        "base_model": (((example_run or first).get("info") or {}).get("model") or {}).get("base")
        or spec0["model"]["base"],
        "main": main,
        "dev_metric": dev_metric,
        "metrics": metric_names,
        "variants": variants,
        "reference": reference,
        "best": best,
        "base_model_score": base_model,
        "baseline_runs": sorted(
            {
                f"{split} split by run {rid}"
                for r in runs
                if r["status"] == "ok"
                for split, rid in ((r.get("info") or {}).get("baseline_from") or {}).items()
            }
        ),
        "factor_charts": factor_charts(factors, base_model, main) if factors else [],
        "merges": _merges(ok_variants, main),
        "index_evals": _index_evals(ok_variants),
        "matryoshka": _matryoshka(ok_variants, others, main),
        "curve_chart": curve_chart(ok_variants, dev_metric),
        "examples": _examples(data, example_run, main) if example_run else {"gains": [], "losses": []},
        "example_variant": (best or reference).label if (best or reference) else None,
        "n_runs": len(all_runs),
        "single": len(variants) == 1 and not variants[0].changes and len(variants[0].runs) <= 1,
        "settings": _settings(reference.runs[0]) if reference else None,
        "others": [
            {"label": v.label, "source": where, "base": stages.get("base"), "tuned": stages.get("tuned")}
            for v in ok_variants
            for where, stages in sorted(others.get(v.runs[-1]["run_id"], {}).items())
        ],
    }


def _around(ref: float, test: dict[str, float]) -> tuple[float, float]:
    """A variant's 95% interval: the reference's value plus the interval of the paired difference to it."""
    return ref + test.get("ci_low", 0.0), ref + test.get("ci_high", 0.0)


def _point(label: str, value: float, is_ref: bool, test: dict[str, float]) -> tuple:
    """The reference's chart point: its interval is that of its gain over the base model, around its value."""
    mean = test.get("mean_diff", 0.0)
    return label, value, is_ref, value - mean + test.get("ci_low", mean), value - mean + test.get("ci_high", mean)


REFERENCE_SETTINGS = (
    "model.base",
    "model.max_seq_length",
    "data.limit",
    "negatives.mode",
    "negatives.per_query",
    "train.backend",
    "train.loss",
    "train.epochs",
    "train.batch_size",
    "train.learning_rate",
    "train.warmup_ratio",
    "train.precision",
    "train.early_stopping.metric",
    "train.seed",
)
"""Hyperparameters the report shows for each experiment's reference run."""


def _settings(run: dict[str, Any]) -> dict[str, Any]:
    """The reference run's hyperparameters, the --set overrides it was run with, and what `recipe: auto` chose.

    The recipe's choices are {field: {"value", "reason"}} as the run recorded them (empty for a manual recipe or
    a spec that set every recipe field).
    """
    spec = json.loads(run["spec_json"])
    overrides = run.get("overrides") or []
    if isinstance(overrides, str):
        overrides = json.loads(overrides)
    return {
        "hyper": {k: _value_at(spec, k) for k in REFERENCE_SETTINGS},
        "overrides": overrides,
        "recipe": (run.get("info") or {}).get("recipe") or {},
    }


def _value_at(spec: dict[str, Any], path: str) -> Any:
    node: Any = spec
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _environment():
    from jinja2 import FileSystemLoader, select_autoescape
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    here = Path(__file__).resolve().parent
    folders = [p for p in (here.parent / "templates", here / "templates") if p.is_dir()]
    # Our own template, but it renders store contents written from users' specs and data: autoescaped, and
    # sandboxed so no value can reach Python internals.
    env = ImmutableSandboxedEnvironment(loader=FileSystemLoader(folders), autoescape=select_autoescape(["html"]))
    env.filters["f4"] = lambda x: "-" if x is None else f"{x:.4f}"
    env.filters["signed"] = lambda x: "-" if x is None else f"{x:+.4f}"
    env.filters["pct"] = lambda x: "-" if x is None else f"{x:+.1%}"
    env.filters["pval"] = lambda x: "-" if x is None else f"{x:.3g}"
    return env


def build_report(dbs: list[str | Path], experiments: list[str] | None = None) -> str:
    """Render the report of one or more experiments (side by side) from one or more stores.

    Args:
        dbs: Result stores; runs of the same experiment in several stores are read together.
        experiments: Experiment names; default: the most recently run experiment.

    Returns:
        A self-contained HTML page.

    Raises:
        KeyError: If a named experiment is in none of the stores.

    """
    from datetime import datetime, timezone

    names = list(experiments or [])
    if not names:
        found = [n for db in dbs for n in store.experiment_names(db)]
        if not found:
            raise KeyError("the store holds no runs")
        names = [found[0]]
    sections = []
    for name in names:
        merged: dict[str, list] = {}
        for db in dbs:
            try:
                part = store.load_experiment(db, name)
            except KeyError:
                continue
            for key, rows in part.items():
                merged.setdefault(key, []).extend(rows)
            merged.setdefault("studies", []).extend(store.load_studies(db, name))
        if not merged:
            raise KeyError(f"no experiment {name!r} in {', '.join(map(str, dbs))}")
        merged["runs"].sort(key=lambda r: r["started_at"] or "")
        sections.append(analyse(merged))
    return (
        _environment()
        .get_template("report.html")
        .render(
            sections=sections,
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            dbs=[str(d) for d in dbs],
        )
    )
