"""Expanding a spec's `ablate:` section into variant specs (one run each, one experiment)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from runner.spec import Spec


@dataclass
class Variant:
    """One variant of an ablation.

    Attributes:
        label: Readable name: "base", or "factor=value[, factor=value]".
        changes: Dotted path -> value applied to the base spec (empty for the base).
        repeat: Repeat index (train.seed = base seed + repeat).
        spec: The resolved variant spec, without `ablate`.

    """

    label: str
    changes: dict[str, Any]
    repeat: int
    spec: Spec = field(repr=False)


def _get(spec: Spec, path: str) -> Any:
    node: Any = spec.model_dump(mode="json")
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _label(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in changes.items()) or "base"


def expand(spec: Spec) -> list[Variant]:
    """The runs an ablation asks for; a spec without `ablate` is one variant, the base.

    one-at-a-time: the base spec first, then for each factor each value that differs from the base value.
    grid: every combination of the factors' values. With `repeats: N`, each variant runs N times with
    train.seed, train.seed + 1, ... .
    """
    ablate = spec.ablate
    if ablate is None:
        return [Variant("base", {}, 0, spec.variant({}))]
    combos: list[dict[str, Any]]
    if ablate.mode == "grid":
        keys = list(ablate.factors)
        combos = [dict(zip(keys, values)) for values in itertools.product(*ablate.factors.values())]
    else:
        combos = [{}]
        for factor, values in ablate.factors.items():
            base_value = _get(spec, factor)
            combos += [{factor: v} for v in values if v != base_value]
    variants = []
    for changes in combos:
        for repeat in range(ablate.repeats):
            seeded = {**changes, "train.seed": spec.train.seed + repeat} if repeat else changes
            variants.append(Variant(_label(changes), changes, repeat, spec.variant(seeded)))
    return variants
