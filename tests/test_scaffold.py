"""`embx init`: from a folder of documents, a BEIR folder or a JSONL file to a spec that validates and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli

from runner.spec import load_spec

TOPICS = ("heart", "lung", "kidney", "liver", "skin")


def _docs(folder: Path) -> Path:
    """Five markdown documents, a few paragraphs each."""
    folder.mkdir(parents=True)
    for topic in TOPICS:
        paragraphs = [
            f"The {topic} is examined when patients report {aspect} problems that last for several weeks in a row."
            f" Doctors ask about the {aspect} history of the {topic} and order simple tests before treatment."
            for aspect in ("pain", "swelling", "diet", "sleep", "exercise", "medicine")
        ]
        (folder / f"{topic}.md").write_text(f"# {topic.title()}\n\n" + "\n\n".join(paragraphs) + "\n")
    return folder


def test_init_on_a_folder_of_five_markdown_files_writes_a_spec_that_validates(tmp_path):
    docs = _docs(tmp_path / "my docs")
    out = tmp_path / "specs/mine.yaml"
    result = cli("init", docs, "-o", out)
    assert result.exit_code == 0, result.output
    assert "documents: 5 documents, 0 skipped" in result.output
    assert result.output.strip().endswith(f"next: embx run {out}")
    text = out.read_text()
    assert text.startswith(f"# embx run {out}\n") and "path: ../my docs" in text  # relative to the spec
    spec = load_spec(out).spec
    assert spec.name == "my-docs" and spec.data.source == "documents" and spec.queries.generator == "ict"
    assert spec.data.splits.dev is None and spec.train.early_stopping is None  # five documents: no dev split
    assert spec.chunking.chunk_size == 192 and spec.model.max_seq_length == 256  # all-MiniLM-L6-v2's 256 tokens
    assert spec.negatives.mode == "in-batch"
    assert spec.train.batch_size == 8 and spec.train.epochs * 2 >= 10  # at least 10 steps of 8 pairs
    assert cli("validate", out).exit_code == 0
    again = cli("init", docs, "-o", out)
    assert again.exit_code == 2 and "exists" in again.output
    assert cli("init", docs, "-o", out, "--force").exit_code == 0


def test_init_on_a_beir_folder_sizes_the_recipe_to_its_pairs(tiny_beir, tmp_path):
    out = tmp_path / "beir.yaml"
    result = cli("init", tiny_beir, "-o", out)
    assert result.exit_code == 0, result.output
    spec = load_spec(out).spec
    assert spec.data.source == "beir" and spec.data.splits.dev == "dev"
    assert spec.negatives.mode == "in-batch"  # 40 passages: too few to mine from
    # 47 train pairs: batch 8, 6 steps an epoch, 5 epochs (30 steps, past the 3-step warm-up)
    assert (spec.train.batch_size, spec.train.epochs) == (8, 5)
    assert spec.train.early_stopping is not None


def test_init_on_a_jsonl_file_needs_its_evaluation_folder(tiny_beir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"query": f"q{i}", "pos": [f"p{i}"], "neg": []}) + "\n" for i in range(400)))
    missing = cli("init", data, "-o", tmp_path / "j.yaml")
    assert missing.exit_code == 2 and "give it with --eval FOLDER" in missing.output
    result = cli("init", data, "--eval", tiny_beir, "-o", tmp_path / "j.yaml")
    assert result.exit_code == 0, result.output
    spec = load_spec(tmp_path / "j.yaml").spec
    assert spec.data.source == "jsonl" and spec.data.eval_path == str(tiny_beir.resolve())
    assert (spec.train.batch_size, spec.train.epochs) == (32, 3)  # 400 pairs: 13 steps an epoch


def test_init_refuses_what_it_cannot_use(tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("init", tmp_path / "empty")
    assert result.exit_code == 2 and "no documents embx can read" in result.output


def test_the_spec_init_writes_runs_and_learns(tiny_model, tmp_path):
    """The walk-through in small: five documents -> init (the tiny model as base) -> run: ok, no learning warning."""
    docs = _docs(tmp_path / "docs")
    out = tmp_path / "docs.yaml"
    assert cli("init", docs, "-o", out, "--base", tiny_model).exit_code == 0
    result = cli("run", out, "--db", tmp_path / "r.duckdb", "--set", "output.embedding_cache=false")
    assert result.exit_code == 0, result.output
    (run,) = json.loads(cli("ls", "--db", tmp_path / "r.duckdb", "--json").stdout)
    learned = json.loads(cli("show", run["run_id"], "--db", tmp_path / "r.duckdb", "--json").stdout)["info"]["learned"]
    assert learned["steps"] >= 10 and learned["left_warmup"] and learned["weights_changed"]


@pytest.mark.parametrize("name", ["my docs", "Données 2024"])
def test_init_names_the_spec_after_the_folder(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    docs = _docs(tmp_path / name)
    assert cli("init", docs).exit_code == 0
    (written,) = tmp_path.glob("*.yaml")
    assert load_spec(written).spec.name == written.stem
