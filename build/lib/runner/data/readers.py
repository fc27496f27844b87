"""Line-numbered readers for JSONL and TSV files: each problem names file and line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from runner.data.types import DataError


def read_jsonl(path: Path, problems: list[str]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; malformed lines are added to `problems`.

    Raises:
        DataError: If the file does not exist.

    """
    if not path.is_file():
        raise DataError([f"{path}: file not found"])
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: malformed JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield number, obj


def read_tsv(path: Path, problems: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for each data row of a TSV file, skipping a header row.

    Raises:
        DataError: If the file does not exist.

    """
    if not path.is_file():
        raise DataError([f"{path}: file not found"])
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if number == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            yield number, row
