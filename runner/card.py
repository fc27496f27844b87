"""The model card of an export: README.md with Hugging Face Hub metadata, written from the results store.

Rendered from templates/model_card.md.j2 in Jinja2's immutable sandbox (no autoescape: Markdown). Every value
that comes from a user (spec text, prefixes, paths) goes into YAML through a YAML dumper, into code through
``repr`` and into fenced blocks whose fence is longer than any backtick run inside.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import records

if TYPE_CHECKING:
    from runner.spec import ModelSpec


@dataclass
class ExportResult:
    """What `embx export` made.

    Attributes:
        run_id: The run whose saved model was exported.
        format: One of :data:`runner.export.FORMATS`.
        path: The export folder (absolute); for a failed parity check, the kept temporary folder or None.
        ok: Whether the parity check passed.
        parity: The parity figures (also in ``parity.json`` and the card).
        load: How to load it: ``{"backend": ..., "file_name": ...}``.
        hub_repo: The Hub repository it was pushed to, if any.

    """

    run_id: str
    format: str
    path: str | None
    ok: bool
    parity: dict[str, Any]
    load: dict[str, str | None] = field(default_factory=dict)
    hub_repo: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return asdict(self)


TRAIN_KEYS = (
    "backend",
    "loss",
    "epochs",
    "learning_rate",
    "batch_size",
    "warmup_ratio",
    "weight_decay",
    "scale",
    "precision",
    "seed",
    "early_stopping",
)
INT8_NOTES = {
    "avx512_vnni": "ONNX Runtime's avx512_vnni config (int8 dot products of Intel CPUs with AVX-512 VNNI)",
    "avx512": "ONNX Runtime's avx512 config",
    "avx2": "ONNX Runtime's avx2 config (reduced range; runs correctly on any x86-64 CPU)",
    "arm64": "ONNX Runtime's arm64 config (per-channel, for ARM CPUs)",
}


def hub_base_model(name: str) -> str | None:
    """The Hub id of a spec's base model for the card's metadata (None for a local folder)."""
    from runner.models import ALIASES

    if name in ALIASES:
        return name if "/" in name else f"sentence-transformers/{name}"
    if Path(name).expanduser().exists() or name.startswith(("/", ".", "~")) or name.count("/") != 1:
        return None
    return name


def fenced(text: str, lang: str = "") -> str:
    """A Markdown code block holding `text` verbatim (its fence is longer than any backtick run inside)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _metadata(run: dict[str, Any], *, base: str, fmt: str, language: str | None, license: str | None) -> str:
    from ruamel.yaml import YAML

    meta: dict[str, Any] = {}
    if language:
        meta["language"] = [code.strip() for code in language.split(",") if code.strip()]
    meta["license"] = license or "unknown"
    meta["library_name"] = "sentence-transformers"
    meta["pipeline_tag"] = "sentence-similarity"
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "embx", "retrieval"]
    if fmt.startswith("onnx"):
        tags.append("onnx")
    if fmt == "onnx-int8":
        tags.append("int8")
    meta["tags"] = tags
    if hub := hub_base_model(base):
        meta["base_model"] = hub
    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(meta, out)
    return out.getvalue().strip()


def _usage(model_spec: ModelSpec, result: ExportResult, repo: str | None) -> str:
    where = repr(repo or "path/to/this/folder")
    if result.load.get("backend") == "onnx":
        load = (
            f'SentenceTransformer({where}, backend="onnx", model_kwargs={{"file_name": {result.load["file_name"]!r}}})'
        )
        install = "pip install 'sentence-transformers[onnx]'"
    else:
        load = f"SentenceTransformer({where})"
        install = "pip install sentence-transformers"
    lines = [
        f"# {install}",
        "from sentence_transformers import SentenceTransformer",
        "",
        f"model = {load}",
        f"query_prefix = {model_spec.query_prefix!r}",
        f"passage_prefix = {model_spec.passage_prefix!r}",
        "queries = [query_prefix + q for q in ['your question']]",
        "passages = [passage_prefix + p for p in ['a passage of your corpus', 'another passage']]",
        "# task routes queries and passages through their own branch of a model with a Router (a query adapter)",
        f"q = model.encode(queries, task='query', normalize_embeddings={model_spec.normalize})",
        f"p = model.encode(passages, task='document', normalize_embeddings={model_spec.normalize})",
        "print(model.similarity(q, p))  # higher: more relevant",
    ]
    return fenced("\n".join(lines), "python")


def _metric_tables(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One table per (split, source): metric rows with base, tuned and delta."""
    order = {records.TEST: 0, records.DEV: 1}
    tables = []
    for split, sources in sorted(run.get("metrics_by_split", {}).items(), key=lambda x: (order.get(x[0], 2), x[0])):
        for source, stages in sorted(sources.items(), key=lambda x: (x[0] != records.NATIVE, x[0])):
            base, tuned = stages.get(records.BASE, {}), stages.get(records.TUNED, {})
            names = list(dict.fromkeys([*tuned, *base]))
            rows = []
            for name in names:
                b, t = base.get(name), tuned.get(name)
                rows.append(
                    {
                        "name": name,
                        "base": "" if b is None else f"{b:.4f}",
                        "tuned": "" if t is None else f"{t:.4f}",
                        "delta": "" if b is None or t is None else f"{t - b:+.4f}",
                    }
                )
            title = split if source == records.NATIVE else f"{split} ({source})"
            tables.append({"title": title, "rows": rows})
    return tables


def _dev_curve(run: dict[str, Any]) -> dict[str, Any] | None:
    prefix = f"{records.DEV}_"
    points: dict[float, dict[str, float]] = {}
    for row in run.get("train_log", []):
        if row["name"].startswith(prefix):
            points.setdefault(row["epoch"], {})[row["name"][len(prefix) :]] = row["value"]
    if not points:
        return None
    names = list(dict.fromkeys(n for values in points.values() for n in values))
    rows = [
        {"epoch": f"{epoch:g}", "cells": [f"{values[n]:.4f}" if n in values else "" for n in names]}
        for epoch, values in sorted(points.items())
    ]
    return {"names": names, "rows": rows}


def _flat(section: dict[str, Any], keys: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    items = section.items() if keys is None else ((k, section[k]) for k in keys if k in section)
    out = []
    for key, value in items:
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        out.append((key, str(value).replace("|", "\\|").replace("\n", " ")))
    return out


def render_card(
    db: str | Path,
    run: dict[str, Any],
    *,
    result: ExportResult,
    model_spec: ModelSpec,
    language: str | None = None,
    license: str | None = None,
    repo: str | None = None,
) -> str:
    """The README.md of an export, from the run as the store holds it.

    Args:
        db: Results store (named in the card).
        run: :func:`runner.store.get_run`'s record.
        result: The export (format, how to load it, parity figures).
        model_spec: The run's model section (base model, prefixes, normalisation).
        language: Language code(s), comma-separated, for the metadata (None: left out).
        license: License identifier (None: unknown).
        repo: The Hub repository, when the card is pushed there (used in the usage snippet).

    """
    from jinja2 import FileSystemLoader
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    spec = json.loads(run.get("spec_json") or "{}")
    info = run.get("info") or {}
    saved = info.get("saved_model")
    checks = (info.get("checks") or {}).get("counts") or {}
    context = {
        "metadata": _metadata(run, base=model_spec.base, fmt=result.format, language=language, license=license),
        "run": run,
        "base": model_spec.base,
        "hub_base": hub_base_model(model_spec.base),
        "model": model_spec,
        "result": result,
        "int8_note": INT8_NOTES.get(result.load.get("quantization") or ""),
        "usage": _usage(model_spec, result, repo),
        "main": (spec.get("eval") or {}).get("main", "ndcg@10"),
        "tables": _metric_tables(run),
        "curve": _dev_curve(run),
        "data": _flat(info.get("data") or {}),
        "checks": [(k, v) for k, v in _flat(checks) if v not in ("0", "0.0")],
        "check_notes": (info.get("checks") or {}).get("notes") or [],
        "negatives": _flat(info.get("negatives") or {}),
        "train": _flat(spec.get("train") or {}, TRAIN_KEYS),
        "trained": _flat(info.get("train") or {}, ("epochs_run", "best_epoch", "precision", "loop", "global_batch")),
        "versions": _flat(run.get("versions") or {}),
        "sha256": saved.get("sha256") if isinstance(saved, dict) else None,
        "parity_json": fenced(json.dumps(result.parity, indent=2), "json"),
        "spec_text": fenced(run.get("spec_text") or json.dumps(spec, indent=2), "yaml"),
        "db": str(db),
    }
    here = Path(__file__).resolve().parent
    folders = [str(p) for p in (here.parent / "templates", here / "templates") if p.is_dir()]
    env = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(folders), autoescape=False, keep_trailing_newline=True, trim_blocks=True
    )
    return env.get_template("model_card.md.j2").render(**context)
