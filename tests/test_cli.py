"""The embx command line, through click's CliRunner with a temporary store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from helpers import run_record

from runner.cli import main

FAST = {"train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}}


@pytest.fixture
def cli():
    def invoke(*args: str):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


BAD_SPEC = """\
name: bad
data:
  path: somewhere
trian:
  epochs: 2
train:
  epochs: many
"""


def test_validate_ok(cli, write_spec):
    path = write_spec()
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: ok (tiny, hash ")


def test_validate_bad_spec_lists_every_problem(cli, write_spec):
    path = write_spec(BAD_SPEC, name="bad.yaml")
    result = cli("validate", path)
    assert result.exit_code == 2
    err = result.stderr
    assert "2 problems in spec:" in err
    assert f"{path}:4:1: trian: unknown key 'trian'; did you mean 'train'?" in err
    assert f"{path}:7:3: train.epochs: Input should be a valid integer" in err
    assert result.stdout == ""


def test_validate_with_set_and_missing_file(cli, write_spec, tmp_path):
    path = write_spec()
    result = cli("validate", path, "--set", "train.epochs=many")
    assert result.exit_code == 2
    assert "--set train.epochs=many: train.epochs:" in result.stderr
    result = cli("validate", tmp_path / "missing.yaml")
    assert result.exit_code == 2
    assert "file not found" in result.stderr


def test_schema_prints_json(cli):
    result = cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert {"name", "data", "model", "train", "eval", "extends"} <= set(schema["properties"])
    assert schema["$defs"]["TrainSpec"]["properties"]["learning_rate"]["description"]


def test_run_ls_show(cli, write_spec, tmp_path):
    db = tmp_path / "results.duckdb"
    path = write_spec(**FAST)
    result = cli("run", path, "--db", db, "--set", "eval.metrics=[recall@10, ndcg@10]")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("tiny: test", "metric", "base", "tuned", "delta", "recall@10", "ndcg@10"):
        assert word in out, word
    assert "training pairs" in out and "recorded in" in out

    listed = cli("ls", "--db", db, "--json")
    assert listed.exit_code == 0
    (run,) = json.loads(listed.stdout)
    assert run["status"] == "ok" and run["experiment"] == "tiny" and run["main_metric"] == "ndcg@10"
    assert set(run["metrics"]) == {"base", "tuned"}
    assert f"run {run['run_id']}" in " ".join(out.split())

    shown = cli("show", run["run_id"][:-2], "--db", db, "--json")
    assert shown.exit_code == 0
    detail = json.loads(shown.stdout)
    assert detail["run_id"] == run["run_id"]
    assert detail["experiment"] == "tiny" and detail["status"] == "ok"
    assert set(detail["metrics"]["base"]) == set(detail["metrics"]["tuned"]) == {"recall@10", "ndcg@10"}
    assert detail["metrics"]["tuned"] == pytest.approx(run["metrics"]["tuned"])
    assert detail["overrides"] == ["eval.metrics=[recall@10, ndcg@10]"]

    # The human-readable form prints the same run.
    text = cli("show", run["run_id"], "--db", db).stdout
    assert run["run_id"] in text and "test (native)" in text

    unknown = cli("show", "nope", "--db", db)
    assert unknown.exit_code == 2 and "no run 'nope'" in unknown.stderr


def test_run_with_bad_data_exits_2_and_is_recorded_failed(cli, write_spec, beir_copy, tmp_path):
    qrels = beir_copy / "qrels" / "dev.tsv"
    with qrels.open("a") as f:
        f.write("q-heart-symptoms-0\tno-such-doc\t1\n")
    line = len(qrels.read_text().splitlines())
    db = tmp_path / "results.duckdb"
    result = cli("run", write_spec(data={"path": str(beir_copy)}), "--db", db)
    assert result.exit_code == 2
    assert f"{qrels}:{line}: document 'no-such-doc' is not in corpus.jsonl" in result.stderr
    assert "recorded as failed" in result.stderr
    runs = json.loads(cli("ls", "--db", db, "--json").stdout)
    assert [r["status"] for r in runs] == ["failed"]
    assert not [r for r in runs if r["status"] == "running"]
    assert f"dev.tsv:{line}" in runs[0]["error"]


def test_run_bad_spec_exits_2_without_a_run(cli, write_spec, tmp_path):
    db = tmp_path / "results.duckdb"
    result = cli("run", write_spec(BAD_SPEC, name="bad.yaml"), "--db", db)
    assert result.exit_code == 2 and "did you mean 'train'" in result.stderr
    assert not db.exists()


# Regression: rich used to shrink the run_id column to '2025010…' at 80 columns (or when piped).
def test_ls_table_shows_whole_run_ids(cli, tmp_path):
    from runner import store

    db = tmp_path / "results.duckdb"
    run_id = "20250101-120000-abcdef"
    rec = run_record(run_id, experiment="a-rather-long-experiment-name", spec_json='{"eval": {"main": "ndcg@10"}}')
    store.start_run(db, rec)
    result = cli("ls", "--db", db)  # CliRunner output is not a terminal: rich uses 80 columns
    assert result.exit_code == 0
    assert run_id in result.stdout


def test_ls_without_store(cli, tmp_path):
    result = cli("ls", "--db", tmp_path / "none.duckdb")
    assert result.exit_code == 2
    assert "no results store" in result.stderr


HEAVY = ("torch", "transformers", "sentence_transformers", "datasets", "chromadb")


@pytest.mark.parametrize("args", [["--help"], ["validate", "SPEC"], ["schema"]])
def test_light_commands_do_not_import_torch(args, write_spec):
    spec = str(write_spec())
    code = textwrap.dedent(
        f"""
        import sys
        from click.testing import CliRunner
        from runner.cli import main
        args = [spec if a == "SPEC" else a for a in {args!r} for spec in [{spec!r}]]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        loaded = [m for m in {HEAVY!r} if m in sys.modules]
        assert not loaded, loaded
        print("clean")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_a_run_that_fails_exits_1_and_is_recorded_failed(cli, write_spec, tmp_path):
    """A run that fails after it started (here: fp16 inference asked for on a CPU) exits 1, says so, and the
    store holds it as failed with the error."""
    db = tmp_path / "results.duckdb"
    result = cli("run", write_spec(**FAST), "--db", db, "--set", "eval.precision=fp16")
    assert result.exit_code == 1
    assert "error: ValueError: precision fp16 needs a CUDA GPU" in result.stderr
    assert f"(run recorded as failed in {db})" in result.stderr
    (run,) = json.loads(cli("ls", "--db", db, "--json").stdout)
    assert run["status"] == "failed" and "fp16 needs a CUDA GPU" in run["error"]


def wide_console(monkeypatch, color: bool = False) -> None:
    """Print the run summary 240 columns wide (no wrapping in table cells), with ANSI colours if `color`."""
    from rich.console import Console

    import runner.summary

    console = Console(force_terminal=color, color_system="standard" if color else None, width=240)
    monkeypatch.setattr(runner.summary, "out", console)


def test_an_ablation_with_a_failed_variant_exits_1(cli, write_spec, tmp_path, monkeypatch):
    """The other variants still run and are printed; the failed one is listed as failed and the exit code is 1."""
    wide_console(monkeypatch)
    db = tmp_path / "results.duckdb"
    spec = write_spec(data={"limit": 8}, ablate={"factors": {"eval.precision": ["fp16"]}}, **FAST)
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 1
    (row,) = [line for line in result.stdout.splitlines() if 'eval.precision="fp16"' in line]
    assert "failed: ValueError: precision fp16 needs a CUDA GPU" in row
    assert "tiny: test" in result.stdout  # the variant that worked is printed
    statuses = {r["variant"]: r["status"] for r in json.loads(cli("ls", "--db", db, "--json").stdout)}
    assert statuses == {"base": "ok", 'eval.precision="fp16"': "failed"}


def test_a_tuned_model_worse_than_the_base_is_a_red_warning(cli, write_spec, tmp_path, monkeypatch):
    """A learning rate of 0.5 wrecks the tiny model: the summary ends with red WARNING lines naming both splits
    and both scores."""
    import re

    wide_console(monkeypatch, color=True)
    train = {**FAST["train"], "learning_rate": 0.5}
    # dev is the test split here, so the wrecked model is worse on both whatever the random base scores on dev
    splits = {"train": "train", "dev": "test", "test": "test"}
    result = cli("run", write_spec(train=train, data={"splits": splits}), "--db", tmp_path / "results.duckdb")
    assert result.exit_code == 0, result.output
    # (the tiny splits also warn that they are too small to measure a change: tests/test_learned.py)
    warnings = [line for line in result.stdout.splitlines() if "WARNING:" in line and "WORSE" in line]
    assert len(warnings) == 2
    for split, line in zip(("dev", "test"), warnings):
        assert line.startswith("\x1b[1;31mWARNING:\x1b[0m")  # bold red
        text = re.sub(r"\x1b\[[0-9;]*m", "", line)
        assert f"WARNING: the tuned model is WORSE than the base model on {split}: ndcg@10 0." in text
        tuned, base = (float(x) for x in text.split("ndcg@10 ")[1].split(" < "))
        assert tuned < base


def test_force_reruns_a_finished_variant(cli, write_spec, tmp_path, caplog):
    """A spec whose run is already ok is skipped (no new run); with --force it runs again."""
    import logging

    caplog.set_level(logging.INFO, logger="runner")
    db = tmp_path / "results.duckdb"
    path = write_spec(data={"limit": 8}, **FAST)
    assert cli("run", path, "--db", db).exit_code == 0
    (first,) = json.loads(cli("ls", "--db", db, "--json").stdout)
    again = cli("run", path, "--db", db)
    assert again.exit_code == 0 and "recorded in" not in again.stdout
    assert f"skip base (repeat 0): run {first['run_id']} is already ok" in caplog.text
    assert len(json.loads(cli("ls", "--db", db, "--json").stdout)) == 1
    forced = cli("run", path, "--db", db, "--force")
    assert forced.exit_code == 0, forced.output
    runs = json.loads(cli("ls", "--db", db, "--json").stdout)
    assert [r["status"] for r in runs] == ["ok", "ok"] and runs[0]["spec_hash"] == runs[1]["spec_hash"]


def test_validate_takes_several_specs_and_reports_each(cli, write_spec, tmp_path):
    good = write_spec(name="good.yaml")
    bad = write_spec(text="name: bad\ndata: {path: .}\ntrain: {epochs: true}\n", name="bad.yaml")
    result = cli("validate", good, bad, good)
    assert result.exit_code == 2
    assert result.output.count(f"{good}: ok (tiny") == 2
    assert f"{bad}:3:" in result.output and "1 of 3 specs have problems" in result.output
    assert cli("validate", good, good).exit_code == 0


@pytest.mark.parametrize(
    ("base", "provider"),
    [
        ("openai/text-embedding-3-small", "OpenAI"),
        ("text-embedding-3-large", "OpenAI"),
        ("voyage-3.5", "Voyage AI"),
        ("embed-english-v3.0", "Cohere"),
        ("gemini-embedding-001", "Google"),
    ],
)
def test_validate_refuses_an_api_model_as_the_base_and_points_to_select(cli, write_spec, base, provider):
    path = write_spec(text=f"name: api\nmodel:\n  base: {base}\ndata: {{path: .}}\n")
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:3:3: model.base: {base!r} is an API model ({provider})" in result.output
    assert "`select:` section (embx select)" in result.output


def test_validate_names_a_missing_local_model_with_its_line(cli, write_spec, tmp_path):
    """./nope and models/mine/v2 (not a hub id: those are org/name) are local folders, checked before any run."""
    for base in ("./nope", "models/mine/v2"):
        path = write_spec(text=f"name: local\ndata: {{path: .}}\nmodel: {{base: {base}}}\n")
        result = cli("validate", path)
        assert result.exit_code == 2
        missing = (tmp_path / base).resolve()
        assert f"{path}:3:9: model.base: folder not found: {missing}" in result.output
    for fine in ("org/name", "BAAI/bge-small-en-v1.5", "openai/clip-vit-base-patch32"):  # hub ids are downloaded
        spec = write_spec(text=f"name: hub\ndata: {{path: .}}\nmodel: {{base: {fine}}}\n")
        assert cli("validate", spec).exit_code == 0


def test_the_same_spec_in_another_folder_finds_its_finished_run(cli, tiny_model, tiny_beir, tmp_path):
    """A checkout moved (or cloned elsewhere) with its data: the run is found, not run again; and a run recorded
    under the old hash (absolute paths) is still found."""
    import shutil

    import duckdb
    from conftest import dump_yaml, spec_data
    from helpers import query

    from runner.spec import load_spec

    db = tmp_path / "results.duckdb"
    specs = []
    for where in ("one", "moved/two"):
        shutil.copytree(tiny_beir, tmp_path / where / "data")
        data = spec_data(tiny_model, tiny_beir, data={"path": "data", "limit": 8}, **FAST)
        specs.append(dump_yaml(data, tmp_path / where / "spec.yaml"))
    assert cli("run", specs[0], "--db", db).exit_code == 0
    assert cli("run", specs[1], "--db", db).exit_code == 0
    assert query(db, "SELECT count(*) FROM runs") == [(1,)]
    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET spec_hash = ?", [load_spec(specs[1]).spec.legacy_spec_hash()])
    con.close()
    assert cli("run", specs[1], "--db", db).exit_code == 0
    assert query(db, "SELECT count(*) FROM runs") == [(1,)]
