"""Loading a spec file: YAML with key positions, `extends`, `--set` overrides and located validation problems."""

from __future__ import annotations

import difflib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from runner.spec.base import apply_override
from runner.spec.experiment import SearchParam, Spec


@dataclass
class Problem:
    """One validation problem, located in a file."""

    file: str
    line: int | None
    col: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path or '<spec>'}: {self.message}"


@dataclass
class SpecError(Exception):
    """A spec that failed to load or validate; holds every problem found, not only the first."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in spec:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


Position = tuple[str, int | None, int | None]
"""Where a key was written: (file, or the --set that wrote it; line; column)."""


@dataclass
class LoadedSpec:
    """A validated spec with the text and location it came from."""

    spec: Spec
    path: Path
    text: str
    overrides: list[str]
    positions: dict[tuple, Position] = field(default_factory=dict, repr=False)
    """Where each key path was written: (file or --set, line, column)."""


def _yaml():
    from ruamel.yaml import YAML

    # The round-trip loader keeps line/column positions; it constructs plain mappings, sequences and
    # scalars only and never executes code from the document.
    return YAML(typ="rt", pure=True)


MAX_SPEC_BYTES = 1 << 20
"""Largest spec file read (1 MiB): a spec is a page of settings, not data."""
MAX_NODES = 100_000
"""Most values a spec may hold once YAML aliases are expanded (an alias bomb grows ~9x per level)."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists a spec may have."""


def _read_yaml(path: Path) -> tuple[Any, str]:
    """Read and parse one spec file, refusing what is not a small UTF-8 YAML mapping with a located problem."""
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    def problem(message: str, line: int | None = None, col: int | None = None) -> SpecError:
        return SpecError([Problem(str(path), line, col, "", message)])

    try:
        size = path.stat().st_size
        if path.is_dir():
            raise problem("is a directory, not a spec file")
        if size > MAX_SPEC_BYTES:
            raise problem(f"{size:,} bytes: a spec file is at most {MAX_SPEC_BYTES:,} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise problem("file not found") from None
    except OSError as exc:
        raise problem(f"cannot read: {exc.strerror or exc}") from None
    text = _decode(raw, problem)
    _check_nesting(text, problem)
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise problem(f"invalid YAML: {exc.problem or exc}", line, col) from None
    except YAMLError as exc:
        raise problem(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise problem(f"invalid YAML: nested too deeply (a spec nests at most {MAX_DEPTH} levels)") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise problem("a spec must be a YAML mapping", 1, 1)
    _check_size(doc, problem)
    return doc, text


def _decode(raw: bytes, problem) -> str:
    """The file's text as UTF-8 (a UTF-8 byte-order mark is allowed), or a problem naming line and column."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise problem("UTF-16 text: save the spec as UTF-8")
    if b"\x00" in raw:
        at = raw.index(b"\x00")
        line, col = raw[:at].count(b"\n") + 1, at - (raw.rfind(b"\n", 0, at) + 1) + 1
        raise problem("binary file (NUL byte): a spec is UTF-8 YAML text", line, col)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise problem(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded; save as UTF-8", line, col
        ) from None


def _check_nesting(text: str, problem) -> None:
    """Refuse nesting beyond MAX_DEPTH before the parser recurses into it (flow brackets, block indentation)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_DEPTH:
        raise problem(f"nested deeper than {MAX_DEPTH} levels ({deepest} brackets)")
    for number, line in enumerate(text.splitlines(), 1):
        indent = len(line) - len(line.lstrip(" "))
        if indent > 4 * MAX_DEPTH:
            raise problem(f"indented {indent} columns: nested deeper than a spec can be", number, 1)


def _check_size(doc: Any, problem) -> None:
    """Refuse documents whose expanded size or depth is beyond any real spec (YAML alias bombs, deep nesting)."""
    count = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise problem(f"more than {MAX_NODES:,} values once YAML aliases are expanded (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise problem(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _positions(node: Any, file: str, prefix: tuple = (), out: dict | None = None) -> dict[tuple, Position]:
    """Map every key path of a ruamel document to (file, line, col), 1-based."""
    out = {} if out is None else out
    if isinstance(node, dict):
        for key in node:
            try:
                line, col = node.lc.key(key)
                out[(*prefix, str(key))] = (file, line + 1, col + 1)
            except (AttributeError, KeyError, TypeError):
                out[(*prefix, str(key))] = (file, None, None)
            _positions(node[key], file, (*prefix, str(key)), out)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            try:
                line, col = node.lc.item(i)
                out[(*prefix, str(i))] = (file, line + 1, col + 1)
            except (AttributeError, KeyError, TypeError, IndexError):
                pass
            _positions(item, file, (*prefix, str(i)), out)
    return out


def _plain(node: Any) -> Any:
    """Convert ruamel containers and scalars to plain Python values."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _merge(base: dict, top: dict) -> dict:
    """Deep-merge two spec mappings; `top` wins, nested mappings merge, lists are replaced."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_tree(
    path: Path, seen: tuple[Path, ...] = (), made: set[str] | None = None
) -> tuple[dict, dict[tuple, Position], str]:
    """Load a spec file and everything it `extends`, returning the merged mapping and key positions.

    `made` collects the absolute paths resolved from paths written relative to a spec file.
    """
    made = set() if made is None else made
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise SpecError([Problem(str(path), None, None, "extends", f"circular extends: {chain}")])
    doc, text = _read_yaml(path)
    positions = _positions(doc, str(path))
    data = _plain(doc)
    parent = data.pop("extends", None)
    if parent is None:
        return _relativise(data, path.parent, _source(data, {}), made), positions, text
    if not isinstance(parent, str):
        file, line, col = positions[("extends",)]
        raise SpecError([Problem(file, line, col, "extends", "extends must be a path to another spec file")])
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        file, line, col = positions[("extends",)]
        why = "is a directory, not a spec file" if parent_path.is_dir() else "file not found"
        raise SpecError([Problem(file, line, col, "extends", f"{why}: {parent_path}")])
    base_data, base_positions, _ = _load_tree(parent_path, (*seen, path), made)
    relative = _relativise(data, path.parent, _source(data, base_data), made)
    return _merge(base_data, relative), {**base_positions, **positions}, text


def _source(data: dict, inherited: dict) -> str:
    """The data source in effect for a spec file: its own, else the one it inherits, else beir."""
    for mapping in (data, inherited):
        section = mapping.get("data")
        if isinstance(section, dict) and isinstance(section.get("source"), str):
            return section["source"]
    return "beir"


def _relativise(data: dict, folder: Path, source: str, made: set[str]) -> dict:
    """Resolve data paths relative to the spec file that names them (hub ids of hf sources are left alone).

    Every path resolved from a relative one is added to `made` (the spec hash takes those relative to the spec).
    """
    resolved = _resolver(folder, made)
    section = data.get("data")
    if isinstance(section, dict):
        for key in ("path", "eval_path"):
            value = section.get(key)
            if not isinstance(value, str):
                continue
            expanded = Path(value).expanduser()
            if expanded.is_absolute():
                section[key] = str(expanded)
                continue
            candidate = folder / expanded
            if candidate.exists() or source != "hf" or key == "eval_path":
                section[key] = resolved(value)
    for section, key in (("data", "mix"), ("eval", "sets")):
        node = data.get(section)
        items = node.get(key) if isinstance(node, dict) else None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                candidate = folder / Path(item["path"]).expanduser()
                if candidate.exists() or item.get("source") != "hf":
                    item["path"] = resolved(item["path"])
    queries = data.get("queries")
    if isinstance(queries, dict):
        for section, key in (("llm", "prompt"), ("llm", "cache"), ("qa_pairs", "path")):
            node = queries.get(section)
            if isinstance(node, dict) and isinstance(node.get(key), str):
                node[key] = resolved(node[key])
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str):
        candidate = folder / model["base"]
        if model["base"].startswith((".", "/")) or candidate.exists():
            model["base"] = resolved(model["base"])
    return data


def _resolver(folder: Path, made: set[str]):
    """Resolves a path as written in a spec file in `folder`, noting the result in `made` when it was relative."""

    def resolve(written: str) -> str:
        path = Path(written).expanduser()
        out = str((folder / path).resolve())
        if not path.is_absolute():
            made.add(out)
        return out

    return resolve


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``dotted.key=value``; the value is read as a YAML scalar or flow collection.

    Args:
        text: The override as given on the command line.

    Returns:
        The key path and the value; the schema then types the value.

    Raises:
        SpecError: If there is no ``=`` or the key is empty.

    """
    from ruamel.yaml.error import YAMLError

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError([Problem("--set", None, None, text, "expected dotted.key=value")])
    try:
        value = _plain(_yaml().load(io.StringIO(raw))) if raw.strip() else ""
    except YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(
            [Problem(f"--set {text}", None, None, key.strip(), f"invalid value {raw!r}: {problem}")]
        ) from None
    return key.strip().split("."), value


def _section_fields(loc: tuple) -> list[str]:
    """Field names that are valid at the mapping addressed by `loc` (for "did you mean")."""
    model: type[BaseModel] | None = Spec
    for part in loc:
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        model = next(
            (
                a
                for a in (annotation, *getattr(annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
    return list(model.model_fields) if model is not None else []


def _problems(
    exc: ValidationError, positions: dict[tuple, Position], main_file: str, overrides: list[tuple[str, ...]] = ()
) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        # `--set name.sub=1` made `name` a mapping: the error is at `name`, but the culprit is the --set.
        made = next(
            (
                keys
                for keys in overrides
                if keys[: len(loc)] == loc
                and len(keys) > len(loc)
                and isinstance(err.get("input"), dict)
                and keys[len(loc)] in err["input"]
            ),
            None,
        )
        message = err["msg"].removeprefix("Value error, ")
        # A cross-field rule names the field it blames as "dotted.path: message"; point at that field.
        blamed = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", message, flags=re.S)
        if blamed:
            loc = (*loc, *blamed.group(1).split("."))
            message = blamed.group(2)
        if err["type"] == "extra_forbidden":
            valid = _section_fields(loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
            message = f"unknown key {loc[-1]!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            if not close and valid:
                message += f" (valid keys: {', '.join(valid)})"
        elif err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
        where = next((positions[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in positions), None)
        if made is not None:
            where = positions[made]
        file, line, col = where if where else (main_file, None, None)
        problems.append(Problem(file, line, col, ".".join(loc), message))
    return problems


def load_spec(path: str | Path, overrides: list[str] | None = None) -> LoadedSpec:
    """Load, merge (`extends`), override (`--set`) and validate a spec file.

    Args:
        path: The YAML spec.
        overrides: ``dotted.key=value`` strings applied after loading.

    Returns:
        The validated spec with its source text.

    Raises:
        SpecError: With every problem found, each located at file:line:col where possible.

    """
    path = Path(path)
    overrides = list(overrides or [])
    made: set[str] = set()
    data, positions, text = _load_tree(path, made=made)
    override_keys: list[tuple[str, ...]] = []
    for item in overrides:
        keys, value = parse_override(item)
        override_keys.append(tuple(keys))
        if keys[0] == "data" and len(keys) == 2 and keys[1] in ("path", "eval_path") and isinstance(value, str):
            value = str(Path(value).resolve()) if Path(value).exists() else value
        apply_override(data, keys, value)
        positions[tuple(keys)] = (f"--set {item}", None, None)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_problems(exc, positions, str(path.resolve()), override_keys)) from None
    if spec.ablate is not None:
        _check_paths("ablate.factors", spec.ablate.factors, spec, positions, str(path.resolve()))
    if spec.search is not None:
        ranges = {name: search_values(param) for name, param in spec.search.params.items()}
        _check_paths("search.params", ranges, spec, positions, str(path.resolve()))
    spec.with_root(str(path.resolve().parent), relative=made)
    return LoadedSpec(spec=spec, path=path.resolve(), text=text, overrides=overrides, positions=positions)


def _check_paths(
    section: str, values_by_path: dict[str, list[Any]], spec: Spec, positions: dict[tuple, Position], main_file: str
) -> None:
    """Check that every dotted path of `ablate.factors` or `search.params` exists and each value validates.

    Runs before any variant or trial does, so a bad value fails at once, naming its factor and line.
    """
    problems = []
    for path, values in values_by_path.items():
        file, line, col = positions.get((*section.split("."), path), (main_file, None, None))
        problem = _path_problem(path.split("."))
        if problem:
            problems.append(Problem(file, line, col, f"{section}.{path}", problem))
            continue
        for value in values:
            if isinstance(value, float) and value.is_integer() and isinstance(_value_at(spec, path), int):
                value = int(value)
            try:
                spec.variant({path: value})
            except ValidationError as exc:
                reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                problems.append(Problem(file, line, col, f"{section}.{path}", f"value {value!r} is invalid: {reasons}"))
    if problems:
        raise SpecError(problems)


def _path_problem(keys: list[str]) -> str | None:
    """Why a dotted path is not a spec field (None if it is one)."""
    fields = _section_fields(tuple(keys[:-1]))
    if fields and keys[-1] in fields:
        return None
    valid = fields or list(Spec.model_fields)
    close = difflib.get_close_matches(keys[-1], valid, n=1, cutoff=0.6)
    return "unknown spec path" + (f"; did you mean {'.'.join([*keys[:-1], close[0]])!r}?" if close else "")


def search_values(param: SearchParam) -> list[Any]:
    """The values whose validity bounds a search range: its choices, or its two ends."""
    return list(param.choices) if param.choices is not None else [param.low, param.high]


def _value_at(spec: Spec, path: str) -> Any:
    node: Any = spec
    for key in path.split("."):
        node = getattr(node, key, None)
    return node
