"""The layering of runner/: import-linter's contracts (pyproject.toml) hold, and no module imports itself back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    """Layers only import down; only the CLI and search import the pipeline; the spec imports no embx module."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_no_import_cycles():
    """No chain of imports leads from a module back to itself (type-checking imports included)."""
    import grimp

    graph = grimp.build_graph("runner", exclude_type_checking_imports=False)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.append(graph.find_shortest_chain(importer=imported, imported=module) + (imported,))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
