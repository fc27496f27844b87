"""Shared pieces of the spec models: the strict base model, metric keys and dotted-path overrides."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

METRIC_PATTERN = re.compile(r"^(recall|ndcg|mrr|map|precision)@([1-9][0-9]*)$")


class _Model(BaseModel):
    """Base for every spec section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_metric(name: str) -> str:
    """Validate a flat metric key such as ``ndcg@10``.

    Args:
        name: The metric key.

    Returns:
        The key, lower-cased.

    Raises:
        ValueError: If the key is not ``recall|ndcg|mrr|map|precision`` followed by ``@k``.

    """
    key = name.strip().lower()
    if not METRIC_PATTERN.match(key):
        raise ValueError(
            f"unknown metric {name!r}: expected recall@k, ndcg@k, mrr@k, map@k or precision@k (e.g. ndcg@10)"
        )
    return key


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    """Set ``data[k1][k2]... = value``, creating mappings on the way."""
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
