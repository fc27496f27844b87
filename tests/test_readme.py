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
    """CI installs as the README says, in fresh venvs, and runs every test once: the onnx extra's in the second."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install, run = 'pip install torch==2.13.0 -e ".[test]"', 'python -m pytest -m "slow or not slow"'
    assert f"{install} && {run}" in readme
    assert f'{install} && python -m pytest -m "(slow or not slow) and not onnx"' in ci
    assert 'pip install torch==2.13.0 -e ".[test,onnx]" && python -m pytest -m onnx' in ci
    assert ci.count("python -m venv --clear") == 2, "each set runs in a fresh venv"
