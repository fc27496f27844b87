"""Generated documentation of the spec: its JSON Schema and the Markdown reference the README embeds."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel

from runner.spec.experiment import Spec


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (what `embx schema` prints)."""
    schema = Spec.model_json_schema()
    schema["properties"]["extends"] = {"type": "string", "description": "Path of a spec this one extends."}
    return schema


def reference_markdown() -> str:
    """The spec reference as a Markdown table per section, generated from the models' field descriptions.

    README.md embeds this text between ``<!-- spec-reference -->`` markers; a test keeps the two equal.
    """
    import typing

    def type_name(annotation: Any) -> str:
        origin = typing.get_origin(annotation)
        if origin is Literal:
            return " \\| ".join(str(a) for a in typing.get_args(annotation))
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            return " \\| ".join(type_name(a) for a in typing.get_args(annotation) if a is not type(None)) + " \\| null"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return "mapping"
        return getattr(annotation, "__name__", str(annotation)).replace("|", "\\|")

    def default(info) -> str:
        if info.is_required():
            return "required"
        value = info.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{json.dumps(value)}`"

    lines: list[str] = []
    sections: list[tuple[str, type[BaseModel]]] = [("", Spec)]
    for prefix, model in sections:
        lines += [f"#### `{prefix or 'top level'}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            annotation = info.annotation
            nested = next(
                (
                    a
                    for a in (annotation, *typing.get_args(annotation))
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                None,
            )
            key = f"{prefix}.{name}" if prefix else name
            if nested is not None:
                sections.append((key, nested))
            description = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {type_name(annotation)} | {default(info)} | {description} |")
        lines.append("")
    lines.append(
        "`extends: other.yaml` (top level) merges this spec over another; paths stay relative to the file "
        "that names them."
    )
    return "\n".join(lines) + "\n"
