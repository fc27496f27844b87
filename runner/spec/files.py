"""Local files and folders a spec names: checked after loading, so a missing path is an error before any run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runner.spec.load import LoadedSpec, Position, Problem, SpecError
from runner.spec.model import api_provider

if TYPE_CHECKING:
    from runner.spec.experiment import Spec


def check_files(loaded: LoadedSpec) -> None:
    """Raise a located SpecError naming every local file or folder the spec names that does not exist.

    The CLI calls it after loading, so `embx validate` reports missing paths and a run fails before its row is
    written (exit 2), not twenty seconds later.
    """
    problems = _missing_files(loaded.spec, loaded.positions, str(loaded.path))
    if problems:
        raise SpecError(problems)


def _missing_files(spec: Spec, positions: dict[tuple, Position], main_file: str) -> list[Problem]:
    """Every local file or folder the spec names that does not exist (hub ids of hf sources excepted).

    Hub ids (a model name without a leading ./, ../, ~ or /, an hf source) are not checked: they are downloaded.
    """
    named: list[tuple[tuple[str, ...], str, str]] = []  # (key path, value, what it must be)
    data = spec.data
    if data.source != "hf":
        named.append((("data", "path"), data.path, "file" if data.source == "jsonl" else "folder"))
    if data.eval_path:
        named.append((("data", "eval_path"), data.eval_path, "folder"))
    for i, src in enumerate(data.mix):
        if src.source != "hf":
            named.append((("data", "mix", str(i), "path"), src.path, "file" if src.source == "jsonl" else "folder"))
    for i, entry in enumerate(spec.eval.sets):
        if entry.source != "hf":
            named.append((("eval", "sets", str(i), "path"), entry.path, "folder"))
    if data.source == "documents":
        if spec.queries.llm is not None and spec.queries.llm.prompt:
            named.append((("queries", "llm", "prompt"), spec.queries.llm.prompt, "file"))
        if spec.queries.qa_pairs is not None:
            named.append((("queries", "qa_pairs", "path"), spec.queries.qa_pairs.path, "file"))
    base = spec.model.base
    problems = _model_problems(base, positions, main_file)
    if Path(base).expanduser().is_absolute() or base.startswith(("./", "../", "~")):
        named.append((("model", "base"), base, "folder"))
    elif base.count("/") > 1:  # a hub id is org/name: this is a folder, relative to the spec
        named.append((("model", "base"), str(Path(main_file).parent / base), "folder"))
    for keys, value, kind in named:
        target = Path(value).expanduser()
        ok = target.is_dir() if kind == "folder" else target.is_file()
        if not ok:
            file, line, col = positions.get(keys, (main_file, None, None))
            what = "is a file, not a folder" if kind == "folder" and target.is_file() else f"{kind} not found"
            if kind == "file" and target.is_dir():
                what = "is a folder, not a file"
            problems.append(Problem(file, line, col, ".".join(keys), f"{what}: {target.resolve()}"))
    return problems


def _model_problems(base: str, positions: dict[tuple, Position], main_file: str) -> list[Problem]:
    """`model.base` naming an API model: embx fine-tunes weights, which an API model does not hand out."""
    provider = api_provider(base)
    if provider is None:
        return []
    file, line, col = positions.get(("model", "base"), (main_file, None, None))
    message = (
        f"{base!r} is an API model ({provider}): fine-tuning needs a model with local weights (a hub id such as"
        " BAAI/bge-small-en-v1.5, a local folder, or all-MiniLM-L6-v2); to compare API models with open ones on"
        " your data, list them as candidates in the `select:` section (embx select); to train a query adapter over"
        " its cached embeddings, give it as train.query_adapter.api and keep a local model.base (it chunks the"
        " documents and runs the data checks)"
    )
    return [Problem(file, line, col, "model.base", message)]
