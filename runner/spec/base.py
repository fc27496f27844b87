"""Shared pieces of the spec models: the strict base model, metric keys and dotted-path overrides."""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator

METRIC_PATTERN = re.compile(r"^(recall|ndcg|mrr|map|precision)@([1-9][0-9]*)$")


class _Model(BaseModel):
    """Base for every spec section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false are not 1/0: a boolean where a number belongs is an error, not a silent 1."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            leaves = _leaf_types(cls.model_fields[info.field_name].annotation)
            if bool not in leaves and leaves & {int, float}:
                raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        return value


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types a field annotation admits at its top level (unions and Annotated unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return set().union(*(_leaf_types(arg) for arg in typing.get_args(annotation)))
    return {annotation}


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


MetricKey = Annotated[str, AfterValidator(lambda name: check_metric(name))]
"""A flat metric key (``ndcg@10``), validated and lower-cased; in a list, each bad key is its own problem."""


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    """Set ``data[k1][k2]... = value``, creating mappings on the way."""
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


API_KEY_ALLOW_ENV = "EMBX_API_KEY_ENVS"
"""Environment variable listing further variable names a spec's api_key_env may name (comma-separated)."""


TRACKING_HOSTS_ENV = "EMBX_TRACKING_HOSTS"
MLFLOW_CREDENTIAL_ENVS = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
)
"""Variables MLflow's client sends (or presents) to whatever tracking server it is pointed at."""


def check_tracking_uri(uri: str | None) -> str | None:
    """Refuse a spec's MLflow tracking server that would receive the user's MLflow credentials unasked.

    MLflow's client sends ``MLFLOW_TRACKING_TOKEN`` (or the username and password) from the environment to the
    tracking server it talks to, and a spec's ``train.tracking_uri`` is its author's choice. With such a variable
    set, an http(s) URI in a spec must name the host of the user's own ``MLFLOW_TRACKING_URI`` or a host the user
    lists outside the spec in ``EMBX_TRACKING_HOSTS`` (comma-separated). Local stores (sqlite, file) send nothing.
    """
    import os
    from urllib.parse import urlsplit

    if uri is None or urlsplit(uri).scheme not in ("http", "https"):
        return uri
    sent = [name for name in MLFLOW_CREDENTIAL_ENVS if os.environ.get(name)]
    if not sent:
        return uri
    host = (urlsplit(uri).hostname or "").lower()
    allowed = {h.strip().lower() for h in os.environ.get(TRACKING_HOSTS_ENV, "").split(",") if h.strip()}
    own = os.environ.get("MLFLOW_TRACKING_URI")
    if own:
        allowed.add((urlsplit(own).hostname or "").lower())
    if host not in allowed:
        raise ValueError(
            f"MLflow would send {', '.join(sent)} to the spec's tracking server {host}: allow the host outside the "
            f"spec with {TRACKING_HOSTS_ENV}={host} (or point MLFLOW_TRACKING_URI at it), or unset the variable"
        )
    return uri


def check_api_key_env(name: str | None) -> str | None:
    """Validate the name of the environment variable an endpoint's API key is read from.

    A spec is shared like a document, and its endpoint URL is the spec author's choice: if a spec could name
    any variable, it could send, say, a cloud credential to a server of its author's. So only names ending in
    ``_API_KEY`` are accepted, plus those the user lists outside the spec in ``EMBX_API_KEY_ENVS``.
    """
    import os
    import re

    if name is None:
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not an environment variable name")
    allowed = {n.strip() for n in os.environ.get(API_KEY_ALLOW_ENV, "").split(",") if n.strip()}
    if not name.upper().endswith("_API_KEY") and name not in allowed:
        raise ValueError(
            f"{name} does not look like an API key variable: use a name ending in _API_KEY, or allow it outside "
            f"the spec with {API_KEY_ALLOW_ENV}={name} (a spec may not send other secrets to its endpoint)"
        )
    return name
