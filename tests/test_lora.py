"""train.lora: adapters train, the base weights stay frozen, and the saved model is merged or the adapters only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli, query


def _run(write_spec, tmp_path, **train):
    spec = write_spec(train={"epochs": 2, "learning_rate": 5e-3, **train}, output={"embedding_cache": False})
    db = tmp_path / "r.duckdb"
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    (info,) = query(db, "SELECT info FROM runs")[0]
    return json.loads(info)


@pytest.mark.parametrize("loop", ["embx", "trainer"])
def test_lora_trains_adapters_and_saves_a_merged_plain_model(write_spec, tmp_path, tiny_model, loop):
    from sentence_transformers import SentenceTransformer

    info = _run(write_spec, tmp_path, loop=loop, lora={"r": 4, "alpha": 8})
    lora = info["train"]["lora"]
    assert 0 < lora["trainable_parameters"] < lora["parameters"] / 50  # adapters only
    assert lora["folded_layers"] == 4  # query and value of 2 layers
    saved = Path(info["saved_model"]["path"])
    assert not (saved / "adapter_config.json").exists()
    tuned, base = SentenceTransformer(str(saved), device="cpu"), SentenceTransformer(str(tiny_model), device="cpu")
    assert not any("lora" in k for k in tuned.state_dict())
    text = ["what do you feel with chest pain"]
    assert not (tuned.encode(text) == base.encode(text)).all()  # the adapters moved the merged weights
    # frozen base weights: only the attention query/value matrices changed
    changed = {k for k, v in tuned.state_dict().items() if not v.equal(base.state_dict()[k])}
    assert changed and all(".attention.self.query." in k or ".attention.self.value." in k for k in changed)
    # The adapters alone, saved beside it: loaded over the base model, they give the merged model's embeddings.
    adapter = Path(info["saved_model"]["adapter"])
    assert adapter == saved / "lora-adapter" and (adapter / "adapter_config.json").exists()
    assert (adapter / "adapter_model.safetensors").stat().st_size < 0.1 * (saved / "model.safetensors").stat().st_size
    over_base = SentenceTransformer(str(tiny_model), device="cpu")
    over_base.load_adapter(str(adapter))
    assert abs(over_base.encode(text) - tuned.encode(text)).max() < 1e-5
