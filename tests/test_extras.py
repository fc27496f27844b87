"""The parts of embx whose library may be absent or fail to import: a clear error naming what to install.

These tests simulate the missing or broken library, so they run (and pass) in both of CI's environments: the main
set (transformers 5, FlagEmbedding, no optimum) and the onnx extra's (transformers 4, optimum-onnx).
"""

from __future__ import annotations

import sys
import types

import pytest

from runner.spec import SpecError, external, load_spec

# What `import FlagEmbedding` raised under transformers 5.24.0 (measured, README "Dependencies").
BROKEN = ModuleNotFoundError(
    "No module named 'transformers.modeling_attn_mask_utils'", name="transformers.modeling_attn_mask_utils"
)


def _absent(monkeypatch, top: str) -> None:
    """Make `top` and its submodules unimportable, as if not installed (None in sys.modules)."""
    for name in [m for m in sys.modules if m == top or m.startswith(f"{top}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, top, None)


def _broken(monkeypatch) -> None:
    """Make the parts' imports raise what FlagEmbedding's import raised under transformers 5.24."""

    def import_module(name: str):
        raise BROKEN

    monkeypatch.setattr(external, "importlib", types.SimpleNamespace(import_module=import_module))


def _problems(path) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(path)
    return " ".join(str(p) for p in err.value.problems)


@pytest.mark.parametrize("case", ["absent", "broken"])
def test_flagembedding_backend_that_cannot_import_is_a_spec_error_naming_the_fix(write_spec, monkeypatch, case):
    _absent(monkeypatch, "FlagEmbedding") if case == "absent" else _broken(monkeypatch)
    text = _problems(write_spec(train={"backend": "flagembedding"}))
    assert "train.backend: flagembedding needs FlagEmbedding" in text
    assert "embx's own requirements select transformers <5.24: pip install torch==2.13.0 -e ." in text
    if case == "absent":
        assert "FlagEmbedding is not installed" in text
    else:
        assert "fails: ModuleNotFoundError: No module named 'transformers.modeling_attn_mask_utils'" in text
    assert "which transformers 5.24 removed" in text


def test_a_sentence_transformers_spec_needs_neither(write_spec, monkeypatch):
    _absent(monkeypatch, "FlagEmbedding")
    _absent(monkeypatch, "optimum")
    assert load_spec(write_spec()).spec.train.backend == "sentence-transformers"


def test_the_onnx_extra_is_named_with_its_install_command_and_the_transformers_version(monkeypatch):
    from importlib.metadata import version

    _broken(monkeypatch)
    with pytest.raises(
        ValueError, match=r'ONNX export needs the onnx extra: .* pip install torch==2.13.0 -e "\.\[onnx\]"'
    ) as err:
        external.require("onnx")
    assert f"(here: transformers {version('transformers')})" in str(err.value)


def test_flagembedding_imports_in_the_main_set():
    """The main set's transformers (<5.24) imports FlagEmbedding's fine-tuning: no extra is needed for it."""
    external.require("flagembedding")
