"""Shipping a run's saved model: `embx export` writes a folder in one format, checks it, and adds a model card.

Formats: ``sentence-transformers`` (the folder as saved), ``onnx`` (``onnx/model.onnx`` plus an O2-optimised
``onnx/model_O2.onnx``) and ``onnx-int8`` (``onnx/model.onnx`` plus a dynamically quantised
``onnx/model_qint8_<config>.onnx``), both through sentence-transformers' own export functions.

Every export is written to a temporary folder beside the target and renamed into place only when it passed its
parity check: the exported model, loaded back as a user would load it, is compared with the run's own saved
model (torch, fp32) on the run's stored test queries and passages. A target is never half-written.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import shutil
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import store
from runner.card import ExportResult
from runner.embed_api import api_adapter_refusal

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.spec import ModelSpec

log = logging.getLogger(__name__)

FORMATS = ("sentence-transformers", "onnx", "onnx-int8")
INT8_CONFIGS = ("auto", "arm64", "avx2", "avx512", "avx512_vnni")
ONNX_OPTIMIZATION = "O2"
"""Optimum's level for the fp32 ONNX file: general and transformers-specific fusions, no GELU approximation."""
SAMPLE = 200
"""Queries and passages (each at most) the parity check encodes."""
FP32_MIN_COSINE = 0.9999
INT8_MAX_NDCG_DELTA = 0.005
INT8_MIN_OVERLAP = 0.9
"""Mean share of the torch model's top 10 that the int8 model also ranks in its top 10."""
INT8_MIN_COSINE_WITHOUT_QRELS = 0.99
"""The int8 criterion when the run stored no judged texts (no ranking can be compared)."""
PROBE_TEXTS = (
    "What are the symptoms of high blood pressure?",
    "How is a fractured wrist treated?",
    "Chronic kidney disease reduces the filtering capacity of the kidneys over months or years.",
    "A balanced diet low in salt helps to control hypertension.",
    "Migraine headaches often come with nausea and sensitivity to light.",
)


class ExportError(Exception):
    """The export cannot be made as asked (bad run, no saved model, target in the way): nothing was written."""


class ParityError(Exception):
    """The exported model does not give the run's embeddings; nothing is left at the target."""

    def __init__(self, message: str, result: ExportResult):
        super().__init__(message)
        self.result = result


def saved_model_path(run: dict[str, Any]) -> Path:
    """The folder of a run's saved model, from ``info.saved_model`` (a path, or ``{"path", "sha256"}``).

    Raises:
        ExportError: The run has no saved model, or its folder is gone.

    """
    saved = (run.get("info") or {}).get("saved_model")
    if isinstance(saved, dict):
        saved = saved.get("path")
    if not saved:
        raise ExportError(
            f"run {run['run_id']} has no saved model: rerun its spec with `output: {{save_model: true}}`"
            " (or --set output.save_model=true) to keep the tuned model"
        )
    path = Path(saved)
    refusal = api_adapter_refusal(path)
    if refusal:
        raise ExportError(f"run {run['run_id']}: {refusal}")
    if not (path / "modules.json").is_file():
        raise ExportError(f"the saved model of run {run['run_id']} is missing on disk: {path} (moved or deleted?)")
    return path


def int8_config(choice: str = "auto") -> str:
    """The ONNX Runtime dynamic quantisation config: as chosen, or for this CPU (arm64, avx512_vnni, else avx2)."""
    if choice != "auto":
        return choice
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        flags = []
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def export_run(
    db: str | Path,
    run_id: str,
    *,
    output: str | Path,
    format: str,
    overwrite: bool = False,
    quantization: str = "auto",
    language: str | None = None,
    license: str | None = None,
    keep_failed: bool = False,
) -> ExportResult:
    """Export a run's saved model to `output` in `format`, check its parity, write its card, record it.

    Args:
        db: Results store.
        run_id: Run id or a unique prefix.
        output: Target folder (must not exist, or be empty, unless `overwrite`).
        format: One of :data:`FORMATS`.
        overwrite: Replace a non-empty target (only once the new export passed its check).
        quantization: int8 config: auto (by this CPU) or one of :data:`INT8_CONFIGS`.
        language: Language code(s) for the card's metadata, comma-separated (unknown: left out).
        license: License identifier for the card (default: unknown).
        keep_failed: Keep the temporary folder of an export that failed its parity check, for inspection.

    Returns:
        The export (ok).

    Raises:
        ExportError: Bad input (nothing written).
        ParityError: The exported model does not reproduce the run's embeddings (recorded in the store; no target).

    """
    from runner.spec import ModelSpec

    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    if quantization not in INT8_CONFIGS:
        raise ExportError(f"unknown int8 config {quantization!r}: choose one of {', '.join(INT8_CONFIGS)}")
    if format != "sentence-transformers":
        from runner.spec.external import require

        try:
            require("onnx")
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    try:
        run = store.get_run(db, run_id)
    except KeyError as exc:
        raise ExportError(f"{exc.args[0]} in {db}") from None
    if run["status"] != "ok":
        raise ExportError(
            f"run {run['run_id']} is {run['status']}: only a finished (ok) run can be exported"
            + (f" (error: {run['error']})" if run.get("error") else "")
        )
    source = saved_model_path(run)
    if format != "sentence-transformers" and (source / "router_config.json").exists():
        raise ExportError(
            f"run {run['run_id']} saved a model with a Router (a query adapter: queries and passages take different "
            "routes), which sentence-transformers' ONNX exporter does not cover: export it as sentence-transformers"
        )
    target = Path(output).expanduser().resolve()
    _check_target(target, source=source, overwrite=overwrite)
    spec = json.loads(run.get("spec_json") or "{}")
    model_spec = ModelSpec.model_validate(spec.get("model") or {"base": str(source)})

    tmp = target.parent / f".{target.name}.embx-export-{os.getpid()}-{secrets.token_hex(3)}"
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        load = _write(format, source=source, folder=tmp, quantization=int8_config(quantization))
        parity = check_parity(db, run, reference=source, exported=tmp, load=load, model_spec=model_spec)
        result = ExportResult(run["run_id"], format, None, parity["ok"], parity, load)
        from runner.card import render_card

        (tmp / "parity.json").write_text(json.dumps(parity, indent=2) + "\n", encoding="utf-8")
        card = render_card(db, run, result=result, model_spec=model_spec, language=language, license=license)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # the parents this export created, innermost first, if still empty
            with suppress(OSError):
                folder.rmdir()
        raise
    if not parity["ok"]:
        if keep_failed:
            result.path = str(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        store.record_export(db, result.run_id, fmt=format, path=result.path, parity=parity, ok=False)
        kept = f"; the failed export is kept in {tmp}" if keep_failed else ""
        raise ParityError(f"parity check failed: {'; '.join(parity['why'])}{kept}", result)
    _move_into_place(tmp, target)
    result.path = str(target)
    store.record_export(db, result.run_id, fmt=format, path=result.path, parity=parity, ok=True)
    return result


def _check_target(target: Path, *, source: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, lies inside (or holds) the saved model, or is a non-empty folder."""
    src = source.resolve()
    if target == src or src.is_relative_to(target) or target.is_relative_to(src):
        raise ExportError(f"the target {target} overlaps the run's saved model {src}: choose another folder")
    if target.exists() and not target.is_dir():
        raise ExportError(f"the target {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"the target {target} exists and is not empty: pass --overwrite to replace it")


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished export onto the target; an existing target is replaced only after the rename."""
    if not target.exists():
        tmp.rename(target)
        return
    old = target.parent / f".{target.name}.embx-old-{os.getpid()}-{secrets.token_hex(3)}"
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write(fmt: str, *, source: Path, folder: Path, quantization: str) -> dict[str, str | None]:
    """Write the model files of one format into `folder` (new); returns how to load them."""
    if fmt == "sentence-transformers":
        shutil.copytree(source, folder)
        (folder / "README.md").unlink(missing_ok=True)  # sentence-transformers' own card; ours replaces it
        return {"backend": "torch", "file_name": None}
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model, export_optimized_onnx_model

    try:
        model = SentenceTransformer(str(source), backend="onnx", device="cpu", local_files_only=True)
        _check_onnx(model, source)
        model.save(str(folder))
        if fmt == "onnx":
            export_optimized_onnx_model(model, ONNX_OPTIMIZATION, str(folder))
            file_name = f"onnx/model_{ONNX_OPTIMIZATION}.onnx"
        else:
            export_dynamic_quantized_onnx_model(model, quantization, str(folder))
            # named model_<weights dtype>_<config>.onnx: qint8 for most configs, quint8 for avx2
            written = sorted((folder / "onnx").glob(f"model_*int8_{quantization}.onnx"))
            file_name = f"onnx/{written[0].name}" if written else f"onnx/model_qint8_{quantization}.onnx"
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise many kinds: unsupported operators, architectures, modules
        raise ExportError(f"cannot export {source} to ONNX: {type(exc).__name__}: {exc}") from exc
    if not (folder / file_name).is_file():
        raise ExportError(f"the ONNX exporter did not write {file_name} for {source}")
    (folder / "README.md").unlink(missing_ok=True)
    return {"backend": "onnx", "file_name": file_name, "quantization": quantization if fmt == "onnx-int8" else None}


def _check_onnx(model: SentenceTransformer, source: Path) -> None:
    """The ONNX backend exports only a transformers model as the first module; anything else cannot go."""
    from optimum.onnxruntime import ORTModel  # present: export_run checked the onnx extra first

    if not isinstance(getattr(model, "transformers_model", None), ORTModel):
        kinds = ", ".join(type(m).__name__ for m in model)
        raise ExportError(
            f"cannot export {source} to ONNX: its modules ({kinds}) have no transformers model that ONNX Runtime"
            " can run; export it as sentence-transformers instead"
        )


def load_exported(folder: Path, load: dict[str, str | None]) -> SentenceTransformer:
    """Load an export as a user would: ``SentenceTransformer(folder[, backend="onnx", model_kwargs=file_name])``."""
    from sentence_transformers import SentenceTransformer

    if load.get("backend") == "onnx":
        return SentenceTransformer(
            str(folder),
            backend="onnx",
            device="cpu",
            local_files_only=True,
            model_kwargs={"file_name": load["file_name"]},
        )
    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def parity_texts(
    db: str | Path, run: dict[str, Any]
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Up to :data:`SAMPLE` of the run's stored test queries and passages (judged passages first), and their qrels.

    Runs that stored no texts get a few fixed probe texts and no qrels.
    """
    dataset = (run.get("info") or {}).get("dataset")
    queries, docs, qrels = store.dataset_texts(db, dataset) if dataset else ({}, {}, {})
    test = {q: rel for q, rel in qrels.get("test", {}).items() if q in queries}
    if not queries or not docs:
        probes = {f"probe-{i}": t for i, t in enumerate(PROBE_TEXTS)}
        return probes, probes, {}
    qids = sorted(test)[:SAMPLE] or sorted(queries)[:SAMPLE]
    judged = [d for q in qids for d in sorted(test.get(q, {})) if d in docs]
    order = list(dict.fromkeys(judged + sorted(docs)))[:SAMPLE]
    kept = set(order)
    sample_qrels = {q: {d: g for d, g in test.get(q, {}).items() if d in kept} for q in qids}
    return {q: queries[q] for q in qids}, {d: docs[d] for d in order}, {q: r for q, r in sample_qrels.items() if r}


def check_parity(
    db: str | Path,
    run: dict[str, Any],
    *,
    reference: Path,
    exported: Path,
    load: dict[str, str | None],
    model_spec: ModelSpec,
) -> dict[str, Any]:
    """Compare the exported model with the run's saved model (torch, fp32) on the run's texts.

    fp32 formats pass with a minimum cosine of :data:`FP32_MIN_COSINE`; int8 passes when NDCG@10 over the
    sampled passages is within :data:`INT8_MAX_NDCG_DELTA` of the torch model's and the mean top-10 overlap is
    at least :data:`INT8_MIN_OVERLAP`. The NDCG@10 rule is one-sided: quantisation noise that happens to rank
    better is not a parity failure (on 100 queries it moves NDCG@10 by about 0.01 either way); a loss is.

    Returns:
        The figures: texts, min/mean cosine, rankings (when qrels are stored), thresholds, ok and why not.

    """
    import numpy as np

    from runner.models import load_model

    queries, docs, qrels = parity_texts(db, run)
    query_texts = [model_spec.query_prefix + t for t in queries.values()]
    passage_texts = [model_spec.passage_prefix + t for t in docs.values()]
    texts = query_texts + passage_texts
    ref = _embed(load_model(model_spec, "cpu", location=str(reference)), query_texts, passage_texts)
    new = _embed(load_exported(exported, load), query_texts, passage_texts)
    cos = np.sum(_unit(ref) * _unit(new), axis=1)
    int8 = load.get("quantization") is not None
    out: dict[str, Any] = {
        "file": load.get("file_name"),
        "backend": load.get("backend"),
        "quantization": load.get("quantization"),
        "queries": len(queries),
        "passages": len(docs),
        "texts": "probe" if not qrels and any(q.startswith("probe-") for q in queries) else "store",
        "min_cosine": round(float(cos.min()), 6),
        "mean_cosine": round(float(cos.mean()), 6),
        "ranking": None,
        "why": [],
    }
    if qrels:
        nq = len(queries)
        out["ranking"] = _compare_rankings(
            (ref[:nq], ref[nq:]),
            (new[:nq], new[nq:]),
            qids=list(queries),
            dids=list(docs),
            qrels=qrels,
            normalize=model_spec.normalize,
        )
    if not int8:
        out["criterion"] = f"min cosine >= {FP32_MIN_COSINE}"
        if out["min_cosine"] < FP32_MIN_COSINE:
            out["why"].append(f"min cosine {out['min_cosine']:.6f} < {FP32_MIN_COSINE} over {len(texts)} texts")
    elif out["ranking"] is not None:
        rank = out["ranking"]
        out["criterion"] = f"delta ndcg@10 >= -{INT8_MAX_NDCG_DELTA} and top-10 overlap >= {INT8_MIN_OVERLAP}"
        if rank["ndcg@10_delta"] < -INT8_MAX_NDCG_DELTA:
            out["why"].append(f"ndcg@10 fell by {-rank['ndcg@10_delta']:.4f} (allowed {INT8_MAX_NDCG_DELTA})")
        if rank["top10_overlap"] < INT8_MIN_OVERLAP:
            out["why"].append(f"top-10 overlap {rank['top10_overlap']:.3f} < {INT8_MIN_OVERLAP}")
    else:
        out["criterion"] = f"min cosine >= {INT8_MIN_COSINE_WITHOUT_QRELS} (no judged texts stored for the run)"
        if out["min_cosine"] < INT8_MIN_COSINE_WITHOUT_QRELS:
            out["why"].append(f"min cosine {out['min_cosine']:.6f} < {INT8_MIN_COSINE_WITHOUT_QRELS}")
    out["ok"] = not out["why"]
    return out


def _embed(model: SentenceTransformer, queries: list[str], passages: list[str]):
    """fp32 numpy embeddings of the queries, then the passages, not normalised, in input order.

    Each goes through its own route of a model with a Router (a query adapter's).
    """
    import numpy as np

    settings = {"batch_size": 32, "convert_to_numpy": True, "normalize_embeddings": False, "show_progress_bar": False}
    routes = ((queries, "query"), (passages, "document"))
    return np.concatenate([np.asarray(model.encode(t, task=task, **settings), np.float32) for t, task in routes if t])


def _unit(x):
    import numpy as np

    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _compare_rankings(ref, new, *, qids: list[str], dids: list[str], qrels, normalize: bool) -> dict[str, Any]:
    """NDCG@10 of both models over the sampled passages and the mean overlap of their top 10s."""
    import numpy as np

    from runner.evaluate import ranked, score_run

    runs = []
    for q_emb, d_emb in (ref, new):
        if normalize:
            q_emb, d_emb = _unit(q_emb), _unit(d_emb)
        sim = q_emb @ d_emb.T
        top = np.argsort(-sim, axis=1, kind="stable")[:, :10]
        runs.append({q: {dids[j]: float(sim[i, j]) for j in top[i]} for i, q in enumerate(qids)})
    ndcg = [score_run(qrels, run, ["ndcg@10"])[0]["ndcg@10"] for run in runs]
    overlap = [
        len({d for d, _ in ranked(runs[0][q])[:10]} & {d for d, _ in ranked(runs[1][q])[:10]}) / min(10, len(dids))
        for q in qids
    ]
    return {
        "queries_judged": len(qrels),
        "ndcg@10_torch": round(ndcg[0], 6),
        "ndcg@10_exported": round(ndcg[1], 6),
        "ndcg@10_delta": round(ndcg[1] - ndcg[0], 6),
        "top10_overlap": round(float(np.mean(overlap)), 4),
        "top10_overlap_min": round(float(np.min(overlap)), 4),
    }


def push_to_hub(
    db: str | Path,
    result: ExportResult,
    *,
    repo: str,
    private: bool = False,
    token: str | None = None,
) -> ExportResult:
    """Upload a passed export to a Hub model repository (created if missing) and record it.

    The card's usage snippet is rewritten to name the repository before the upload. The token comes from the
    caller (the CLI reads ``$HF_TOKEN``; None: huggingface_hub's own login) and is never stored or printed;
    ``$HF_ENDPOINT`` points huggingface_hub at another Hub.

    Raises:
        ExportError: The export did not pass, or the Hub refused the repository or the upload (the message
            carries the Hub's answer, never the token).

    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from runner.card import render_card
    from runner.spec import ModelSpec

    if not result.ok or result.path is None:
        raise ExportError("only an export that passed its parity check can be pushed")
    run = store.get_run(db, result.run_id)
    model_spec = ModelSpec.model_validate(json.loads(run.get("spec_json") or "{}").get("model") or {"base": "?"})
    folder = Path(result.path)
    card = folder / "README.md"
    meta = card.read_text(encoding="utf-8").split("---\n")[1] if card.is_file() else ""
    text = render_card(db, run, result=result, model_spec=model_spec, repo=repo)
    if meta:  # the metadata block as written at export (language, license): only the body changes
        text = "---\n" + meta + "---\n" + text.split("---\n", 2)[2]
    card.write_text(text, encoding="utf-8")
    import os

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)  # read now: a mirror or a test Hub
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            folder_path=str(folder),
            repo_type="model",
            commit_message=f"embx export of run {result.run_id} ({result.format})",
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ExportError(f"pushing to the Hub repository {repo} failed: {type(exc).__name__}: {exc}") from exc
    result.hub_repo = repo
    store.record_export(
        db, result.run_id, fmt=result.format, path=result.path, parity=result.parity, ok=True, hub_repo=repo
    )
    return result
