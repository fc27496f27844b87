"""Bad and hostile input: a shared spec runs no code, and every bad file gets a located message and exit 2.

Each test here failed on the code before the hardening change (see the commit message); together with the
seeded fuzz test at the end they hold the CLI to "exit 0 or 2, never a traceback" for specs and BEIR files.
"""

from __future__ import annotations

import json
import os
import random
import time
import tracemalloc
from pathlib import Path

import pytest
from helpers import cli, query

from runner.spec import SpecError, load_spec

# ------------------------------------------------------------------------------------------ no code from a spec


def test_prompt_template_cannot_reach_python_internals(tmp_path: Path):
    """A template reaching for __init__/__globals__ (to call os.popen) is refused and runs nothing."""
    from runner.data.llm_queries import _prompt_template, _render
    from runner.data.types import Chunk

    marker = tmp_path / "pwned"
    (tmp_path / "evil.j2").write_text(
        "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
        "{{ ''.__class__.__mro__[1].__subclasses__() }} {{ chunk }}"
    )
    chunk = Chunk(chunk_id="c1", doc_id="a.md", text="text of the chunk", level="fine", position=0, heading_path=("H",))
    with pytest.raises(ValueError, match="unsafe|undefined"):
        template = _prompt_template("evil.j2", tmp_path)
        _render(template, "evil.j2", chunk, None, 2)
    assert not marker.exists()


def test_api_key_env_must_look_like_an_api_key(monkeypatch):
    from runner.spec import LLMSpec

    with pytest.raises(ValueError, match="does not look like an API key"):
        LLMSpec(base_url="http://evil.example/v1", model="m", api_key_env="AWS_SECRET_ACCESS_KEY")
    assert LLMSpec(base_url="http://x/v1", model="m", api_key_env="MISTRAL_API_KEY").api_key_env == "MISTRAL_API_KEY"
    monkeypatch.setenv("EMBX_API_KEY_ENVS", "MY_GATEWAY_TOKEN, OTHER")
    assert LLMSpec(base_url="http://x/v1", model="m", api_key_env="MY_GATEWAY_TOKEN").api_key_env == "MY_GATEWAY_TOKEN"


# --------------------------------------------------------------------------------------------- YAML limits


def test_alias_bomb_is_rejected_fast_and_small(tmp_path: Path):
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 11)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join([*lines, "name: bomb", "data: {path: d}"]) + "\n")
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(SpecError, match="alias"):
        load_spec(path)
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 100 * 2**20


def test_deep_flow_nesting_is_a_problem_not_a_recursion_error(tmp_path: Path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\nd: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError, match="nested deeper"):
        load_spec(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"name: x\ndata: {path: d}\nnote: caf\xe9\n", "deep.yaml:3:10: <spec>: not UTF-8"),
        ("name: x\n".encode("utf-16"), "UTF-16"),
        (b"name: x\n\x00\x01\x02", "deep.yaml:2:1: <spec>: binary file"),
    ],
)
def test_undecodable_spec_files_are_located_problems(tmp_path: Path, content: bytes, expected: str):
    path = tmp_path / "deep.yaml"
    path.write_bytes(content)
    result = cli("validate", path)
    assert result.exit_code == 2
    assert expected in result.output


def test_extends_naming_a_folder_or_a_binary_file(tmp_path: Path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "blob.yaml").write_bytes(b"\x00\xff" * 10)
    (tmp_path / "a.yaml").write_text("extends: folder\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: blob.yaml\nname: b\n")
    first, second = cli("validate", tmp_path / "a.yaml"), cli("validate", tmp_path / "b.yaml")
    assert first.exit_code == second.exit_code == 2
    assert "a.yaml:1:1: extends: is a directory" in first.output
    assert "blob.yaml:1:1: <spec>: binary file" in second.output


# ----------------------------------------------------------------------------------- silently wrong values


def test_booleans_are_not_numbers_and_every_bad_metric_is_reported(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ndata: {path: d}\ntrain: {epochs: true}\neval: {metrics: [ndcg@10, foo@3, recall@x]}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    found = {p.path: p for p in caught.value.problems}
    assert set(found) == {"train.epochs", "eval.metrics.1", "eval.metrics.2"}
    assert "boolean true" in found["train.epochs"].message


def test_set_errors_point_at_the_set(write_spec):
    result = cli("validate", write_spec(), "--set", "name.sub=1")
    assert result.exit_code == 2
    assert "--set name.sub=1: name:" in result.output


def test_validate_names_missing_paths_and_run_writes_no_row(write_spec, tmp_path: Path):
    path = write_spec(model={"base": "./no-such-model"}, data={"path": str(tmp_path / "no-such-data")})
    result = cli("validate", path)
    assert result.exit_code == 2
    assert "model.base: folder not found" in result.output and "data.path: folder not found" in result.output
    db = tmp_path / "r.duckdb"
    assert cli("run", path, "--db", db).exit_code == 2
    assert not db.exists() or query(db, "SELECT count(*) FROM runs") == [(0,)]


# ------------------------------------------------------------------------------------------ bad BEIR data


def _beir(root: Path, *, corpus: bytes, queries: bytes, qrels: bytes) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(corpus)
    (root / "queries.jsonl").write_bytes(queries)
    (root / "qrels" / "test.tsv").write_bytes(qrels)
    return root


def test_bad_beir_values_are_all_listed_with_file_and_line(tmp_path: Path):
    from runner.data.beir import load_beir
    from runner.data.types import DataError

    root = _beir(
        tmp_path / "b",
        corpus=b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "caf\xe9"}\n{"_id": "d3", "text": 7}\n',
        queries=b'{"_id": "q1", "text": "fine"}\n{"_id": "q2", "text": null}\n{"_id": "q3", "text": ["a"]}\n',
        qrels=b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\nq1\td1\tinf\nq1\td1\tnan\nq1\tmissing\t1\n",
    )
    with pytest.raises(DataError) as caught:
        load_beir(root, ["test"])
    text = str(caught.value)
    assert "corpus.jsonl:2: not UTF-8 text: byte 0xe9" in text
    assert "corpus.jsonl:3: document 'd3': field 'text' must be a string, got int" in text
    assert "queries.jsonl:2: query 'q2': field 'text' must be a string, got null" in text
    assert "queries.jsonl:3: query 'q3': field 'text' must be a string, got list" in text
    assert "test.tsv:2: score 'inf' is not a finite number" in text
    assert "test.tsv:3: score 'nan' is not a finite number" in text
    assert "test.tsv:4: document 'missing' is not in corpus.jsonl" in text
    assert "'score' is not a number" not in text  # the BOM did not turn the header into a data row


# ------------------------------------------------------------------------------------------ run lifecycle


def test_interrupted_run_says_ctrl_c(write_spec, tmp_path: Path):
    from runner.pipeline import run_spec

    def interrupt(epoch, metrics):
        raise KeyboardInterrupt

    db = tmp_path / "r.duckdb"
    with pytest.raises(KeyboardInterrupt):
        run_spec(load_spec(write_spec(train={"epochs": 1})), db, on_dev=interrupt)
    assert query(db, "SELECT status, error FROM runs") == [("interrupted", "interrupted (Ctrl-C)")]


def test_training_folders_of_dead_processes_are_removed(tmp_path: Path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from runner.train.base import remove_orphan_workdirs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"embx-{dead.stdout.strip()}-20260101-000000-abcdef-x1"
    mine = tmp_path / f"embx-{os.getpid()}-20260101-000000-abcdef-x2"
    other = tmp_path / "embx-not-ours"
    for folder in (orphan, mine, other):
        folder.mkdir()
    remove_orphan_workdirs()
    assert not orphan.exists() and mine.exists() and other.exists()


# ----------------------------------------------------------------------------------------------- report


def test_dollar_signs_in_labels_are_text_not_tex():
    from runner.charts import factor_charts

    charts = factor_charts(
        {"model.query_prefix": [("cost $5 vs $", 0.5, True, 0.45, 0.55), ("$\\frac{$", 0.4, False, 0.3, 0.5)]},
        0.3,
        "ndcg@10",
    )
    assert len(charts) == 1


# --------------------------------------------------------------------------------------------------- fuzz


def _mutations(text: str, rng: random.Random, n: int) -> list[str]:
    """Seeded mutations of a valid text: cut, duplicated or swapped lines, YAML punctuation, type flips."""
    tokens = [
        ": ",
        "- ",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "!!python/object:os.system ",
        '"',
        "'",
        "\t",
        "null",
        "true",
        "1e999",
        "-1",
        "\u00e9",
        "%",
        "<<: *a",
        "---",
        "...",
        "? ",
        "|",
        ">",
        "#",
    ]
    out = []
    lines = text.splitlines()
    for _ in range(n):
        copy = list(lines)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(copy))
            kind = rng.randrange(5)
            if kind == 0:
                del copy[i]
            elif kind == 1:
                copy.insert(i, copy[rng.randrange(len(copy))])
            elif kind == 2:
                pos = rng.randrange(len(copy[i]) + 1)
                copy[i] = copy[i][:pos] + rng.choice(tokens) + copy[i][pos:]
            elif kind == 3:
                copy[i] = copy[i].split(":")[0] + ": " + rng.choice(tokens)
            else:
                j = rng.randrange(len(copy))
                copy[i], copy[j] = copy[j], copy[i]
            if not copy:
                copy = [""]
        out.append("\n".join(copy) + "\n")
    return out


def test_fuzzed_specs_get_exit_0_or_2_never_a_traceback(write_spec, tmp_path: Path):
    """300 seeded mutations of a full spec through `embx validate`: each exits 0 or 2 with a message."""
    base = write_spec(
        ablate={"factors": {"train.learning_rate": [1.0e-4]}},
        search={"trials": 2, "params": {"negatives.per_query": {"low": 1, "high": 3}}},
    ).read_text()
    rng = random.Random(13)
    codes = {0: 0, 2: 0}
    for i, text in enumerate(_mutations(base, rng, 300)):
        path = tmp_path / f"fuzz{i}.yaml"
        raw = text.encode("utf-8")
        if rng.random() < 0.2:  # bytes no YAML text has: undecodable, NUL, a UTF-16 mark
            pos = rng.randrange(len(raw))
            raw = raw[:pos] + rng.choice([b"\xff", b"\x00", b"\xe9", b"\xff\xfe"]) + raw[pos:]
        path.write_bytes(raw)
        result = cli("validate", path)
        assert result.exit_code in (0, 2), f"case {i}:\n{text}\n{result.output}"
        codes[result.exit_code] += 1
        if result.exit_code == 2:
            assert str(path) in result.output or "--set" in result.output, result.output
    assert codes[2] > 100  # the mutations really produce bad specs


def test_fuzzed_beir_files_get_data_errors_only(tiny_beir: Path, tmp_path: Path):
    """200 seeded byte/line mutations of the tiny BEIR set: loading raises DataError or succeeds, nothing else."""
    from runner.data.beir import load_beir
    from runner.data.types import DataError

    rng = random.Random(14)
    files = ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"]
    originals = {f: (tiny_beir / f).read_bytes() for f in files}
    junk = [b"\xff", b"\x00", b"\xef\xbb\xbf", b'"', b"{", b"}", b"\t", b"\n", b"null", b"inf", b"-1", b"1e400", b"[]"]
    outcomes = {"ok": 0, "error": 0}
    for case in range(200):
        root = tmp_path / f"b{case}"
        (root / "qrels").mkdir(parents=True)
        for name, raw in originals.items():
            (root / name).write_bytes(raw)
        name = rng.choice(files)
        raw = bytearray(originals[name])
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(raw))
            if rng.random() < 0.5:
                raw[pos : pos + rng.randint(1, 20)] = rng.choice(junk)
            else:
                raw[pos:pos] = rng.choice(junk)
        (root / name).write_bytes(bytes(raw))
        try:
            load_beir(root, ["train", "test"])
            outcomes["ok"] += 1
        except DataError as exc:
            assert all(str(root) in p for p in exc.problems), exc.problems
            outcomes["error"] += 1
    assert outcomes["error"] > 100


def test_fuzzed_runs_exit_0_or_2_and_leave_no_running_row(make_spec, tiny_beir: Path, tmp_path: Path):
    """Ten seeded broken BEIR sets through `embx run`: exit 0 or 2, and the store holds no `running` row."""
    import shutil

    rng = random.Random(15)
    db = tmp_path / "r.duckdb"
    for case in range(10):
        root = Path(shutil.copytree(tiny_beir, tmp_path / f"b{case}"))
        target = root / rng.choice(["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
        raw = bytearray(target.read_bytes())
        pos = rng.randrange(len(raw))
        raw[pos:pos] = rng.choice([b"\xff", b'{"_id": 1, "text": null}\n', b"q\td\tinf\n", b"\x00"])
        target.write_bytes(bytes(raw))
        spec = make_spec(tmp_path / f"s{case}.yaml", data={"path": str(root)}, train={"epochs": 1})
        result = cli("run", spec, "--db", db)
        assert result.exit_code in (0, 2), result.output
    assert query(db, "SELECT count(*) FROM runs WHERE status = 'running'") == [(0,)]


def test_error_text_is_masked_before_it_is_cut(tmp_path: Path, monkeypatch):
    """An endpoint quoting the API key at character ~200 of its error: no part of the key reaches the reason."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tq", Path(__file__).with_name("test_queries.py"))
    tq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tq)
    from runner.data.queries import generate_queries

    fake = tq.FakeLLM()
    try:
        secret = "sk-" + "k" * 40
        monkeypatch.setenv(tq.KEY_ENV, secret)
        chunk = tq._chunk("a.md", 0, "ID=ECHOKEY TOPIC=x text", ["A"])
        result = generate_queries([chunk], {"a.md": tq._doc("a.md", "A")}, tq._llm_spec(fake.url), base_dir=tmp_path)
    finally:
        fake.close()
    reasons = " ".join(s.reason for s in result.skipped)
    assert reasons and "sk-" not in reasons and "kkkk" not in reasons
    assert json.dumps(result.stats)  # the run went on
