"""FlagEmbedding training JSONL ({query, pos, neg, prompt?}): parsing and line-numbered errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.data.jsonl import load_pairs_jsonl
from runner.data.types import DataError


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_parse_pairs(tmp_path):
    path = write(
        tmp_path / "train.jsonl",
        [
            {"query": "what is a heart attack", "pos": ["cardiac arrest ", "myocardial infarction"], "neg": ["rash"]},
            "",
            {"query": "kidney stone", "pos": "renal calculus"},
            {"query": "lungs", "pos": ["pulmonary"], "neg": [], "prompt": "Represent this query: "},
        ],
    )
    pairs = load_pairs_jsonl(path)
    assert [(p.query, p.positive, p.negatives, p.query_id) for p in pairs] == [
        ("what is a heart attack", "cardiac arrest", ["rash"], "line1"),
        ("what is a heart attack", "myocardial infarction", ["rash"], "line1"),
        ("kidney stone", "renal calculus", [], "line3"),
        ("Represent this query: lungs", "pulmonary", [], "line4"),
    ]
    # Each pair owns its negatives list.
    pairs[0].negatives.append("x")
    assert pairs[1].negatives == ["rash"]


def test_errors_with_line_numbers_all_at_once(tmp_path):
    path = write(
        tmp_path / "train.jsonl",
        [
            {"query": "fine", "pos": ["ok"]},
            '{"query": "broken", ',
            {"pos": ["no query"]},
            {"query": "  ", "pos": ["blank query"]},
            {"query": "q", "pos": []},
            {"query": "q", "pos": ["good", ""]},
            {"query": "q", "pos": ["p"], "neg": "not a list"},
            {"query": "q", "pos": ["p"], "neg": [1, 2]},
            "[]",
        ],
    )
    with pytest.raises(DataError) as info:
        load_pairs_jsonl(path)
    found = info.value.problems
    assert found[0].startswith(f"{path}:2: malformed JSON")
    assert found[1:] == [
        f"{path}:3: field 'query' must be a non-empty string",
        f"{path}:4: field 'query' must be a non-empty string",
        f"{path}:5: field 'pos' must be a non-empty list of non-empty strings",
        f"{path}:6: field 'pos' must be a non-empty list of non-empty strings",
        f"{path}:7: field 'neg' must be a list of strings",
        f"{path}:8: field 'neg' must be a list of strings",
        f"{path}:9: expected a JSON object, got list",
    ]


def test_empty_and_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError) as info:
        load_pairs_jsonl(empty)
    assert info.value.problems == [f"{empty}: no training pairs"]
    with pytest.raises(DataError, match="file not found"):
        load_pairs_jsonl(tmp_path / "missing.jsonl")
