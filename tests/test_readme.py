"""README.md stays true to the code: its spec reference and set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

from runner.spec import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_spec_reference_matches_schema():
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- spec-reference:start -->\n(.*)<!-- spec-reference:end -->", text, flags=re.S)
    assert found, "README.md lost its spec-reference markers"
    assert found.group(1) == reference_markdown(), "README spec reference is stale: paste `embx schema --markdown`"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -m "slow or not slow"'
    assert command in readme
    assert command in ci
