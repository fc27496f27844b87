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
    for number, line in _lines(path, problems):
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
    for number, line in _lines(path, problems):
        row = next(csv.reader([line.rstrip("\r\n")], delimiter="\t", quoting=csv.QUOTE_NONE), [])
        if not row or not any(cell.strip() for cell in row):
            continue
        if number == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        yield number, row


def _lines(path: Path, problems: list[str]) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of a UTF-8 file (a byte-order mark is dropped); undecodable lines are problems.

    Raises:
        DataError: If the file does not exist or cannot be read.

    """
    if not path.is_file():
        raise DataError([f"{path}: file not found"])
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    with handle:
        for number, raw in enumerate(handle, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(
                    f"{path}:{number}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} "
                    "(save the file as UTF-8)"
                )
