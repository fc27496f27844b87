"""`embx select`: local, saved-run and API candidates side by side, recorded in the store, skipped when done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import dump_yaml, spec_data
from fake_embeddings import FakeEmbeddings
from helpers import cli, query

from runner import store
from runner.selection import selection_cells, selection_table

KEY_ENV = "EMBX_TEST_API_KEY"
KEY = "sk-test-secret-0123456789"


def _api(url: str, **fields) -> dict:
    return {
        "base_url": url,
        "model": "fake-embedding",
        "api_key_env": KEY_ENV,
        "price_per_million_tokens": 0.02,
        "batch_size": 16,
        "max_retries": 2,
        "timeout_s": 2,
        **fields,
    }


def _select_spec(tiny_model: Path, tiny_beir: Path, path: Path, candidates: list[dict], **sections) -> Path:
    select = {
        "candidates": candidates,
        "queries_per_month": 1000,
        "throughput_sample": 16,
        **sections.pop("select", {}),
    }
    data = spec_data(tiny_model, tiny_beir, name="tiny-select", select=select, **sections)
    return dump_yaml(data, path)


@pytest.fixture(scope="module")
def selected(tmp_path_factory, tiny_model, tiny_beir):
    """A saved tuned run, then `embx select` over a local model twice (two settings), that run's model and an API."""
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, KEY)
    root = tmp_path_factory.mktemp("select")
    db = root / "results.duckdb"
    mp.chdir(root)
    source = dump_yaml(spec_data(tiny_model, tiny_beir, name="tiny-src", train={"epochs": 1}), root / "src.yaml")
    assert cli("run", source, "--db", db).exit_code == 0
    fake = FakeEmbeddings(key=KEY)
    candidates = [
        {"label": "tiny", "model": {"base": str(tiny_model), "max_seq_length": 32}, "languages": ["en"]},
        {"label": "tiny-cls", "model": {"base": str(tiny_model), "pooling": "cls", "max_seq_length": 32}},
        {"label": "tiny-8", "model": {"base": str(tiny_model), "max_seq_length": 8}},
        {"label": "tuned", "run": "tiny-src"},
        {"label": "api", "api": _api(fake.url), "languages": ["en", "zh"]},
    ]
    spec = _select_spec(tiny_model, tiny_beir, root / "select.yaml", candidates)
    first = cli("select", spec, "--db", db)
    calls_after_first = fake.calls
    second = cli("select", spec, "--db", db)
    yield {
        "root": root,
        "db": db,
        "spec": spec,
        "first": first,
        "second": second,
        "fake": fake,
        "calls_after_first": calls_after_first,
    }
    fake.close()
    mp.undo()


def test_every_candidate_is_one_base_run_and_a_rerun_skips_them(selected):
    db, first = selected["db"], selected["first"]
    assert first.exit_code == 0, first.output
    runs = query(db, "SELECT variant, status, spec_hash FROM runs WHERE experiment = 'tiny-select' ORDER BY variant")
    assert [(v, s) for v, s, _ in runs] == [
        ("select:api", "ok"),
        ("select:tiny", "ok"),
        ("select:tiny-8", "ok"),
        ("select:tiny-cls", "ok"),
        ("select:tuned", "ok"),
    ]
    assert len({h for _, _, h in runs}) == 5
    stages = query(
        db, "SELECT DISTINCT m.stage FROM metrics m JOIN runs r USING (run_id) WHERE r.experiment = 'tiny-select'"
    )
    assert stages == [("base",)]
    assert "recommended:" in first.output and "rule:" in first.output
    second = selected["second"]
    assert second.exit_code == 0, second.output
    assert second.output.count("already evaluated") == 5
    assert selected["fake"].calls == selected["calls_after_first"]  # nothing asked of the endpoint again


def test_the_table_compares_candidates_with_intervals_and_profiles(selected):
    data = store.load_experiment(selected["db"], "tiny-select")
    table = selection_table(data)
    rows = {r.label: r for r in table.rows}
    assert set(rows) == {"tiny", "tiny-cls", "tiny-8", "tuned", "api"}
    leader = rows[table.leader]
    assert leader.metrics["ndcg@10"] == max(r.metrics["ndcg@10"] for r in rows.values())
    for row in rows.values():
        low, high = row.interval
        assert low <= row.metrics["ndcg@10"] <= high
        assert row.vs_leader["n"] == table.queries > 0
    assert table.recommended in rows and rows[table.recommended].tied
    # test and dev share one corpus encode; `tiny` is the model tiny-src's run evaluated as its base: reused
    assert {label: r.profile["corpus_encodes"] for label, r in rows.items()} == {
        "tiny": 0,
        "tiny-cls": 1,
        "tiny-8": 1,
        "tuned": 1,
        "api": 1,
    }
    (source,) = query(selected["db"], "SELECT run_id FROM runs WHERE experiment = 'tiny-src'")[0]
    assert json.loads(query(selected["db"], "SELECT info FROM runs WHERE run_id = ?", [rows["tiny"].run_id])[0][0])[
        "baseline_from"
    ] == {"test": source, "dev": source}
    assert table.recommended in table.recommendation and "leader" in table.recommendation
    # pooling changes the scores; the tuned model is another model
    assert rows["tiny-cls"].metrics != rows["tiny"].metrics
    assert rows["tuned"].metrics != rows["tiny"].metrics
    assert Path(rows["tuned"].profile["model"]).is_dir()  # the saved model of run tiny-src
    tiny, cut = rows["tiny"].profile, rows["tiny-8"].profile
    assert tiny["dimensions"] == 32 and tiny["parameters"] > 0 and tiny["max_tokens"] == 32
    assert cut["max_tokens"] == 8 and cut["truncation"]["passages_share"] > tiny["truncation"]["passages_share"]
    assert tiny["index_bytes"] == {"fp32": 40 * 32 * 4, "int8": 40 * 32}
    assert tiny["throughput"]["texts_per_s"] > 0 and tiny["cost"]["corpus_once"] == 0.0
    assert rows["tiny"].profile["languages"]["declared"] == ["en"]
    assert rows["tiny-cls"].profile["languages"]["declared"] is None


def test_the_api_candidate_is_costed_from_the_endpoints_token_counts(selected):
    rows = {r.label: r for r in selection_table(store.load_experiment(selected["db"], "tiny-select")).rows}
    api = rows["api"].profile
    cost = api["cost"]
    assert api["dimensions"] == 64 and api["parameters"] is None
    assert cost["tokens_spent"] > 0
    assert cost["corpus_once"] == pytest.approx(cost["corpus_tokens"] * 0.02 / 1e6, rel=1e-3)
    assert api["throughput"]["p50_ms"] is not None and api["truncation"]["estimated"] is True
    # every text the evaluation needed was asked once (corpus + test and dev queries), none twice
    texts = selected["fake"].texts_embedded()
    assert len(texts) == len(set(texts))
    # the feature-hash vectors retrieve: the fake model is no random baseline
    assert rows["api"].metrics["ndcg@10"] > 0.2


def test_the_api_key_is_written_nowhere(selected):
    root = selected["root"]
    found = [p for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert found == []
    assert KEY not in selected["first"].output
    report = root / "report.html"
    assert cli("report", "--db", selected["db"], "--experiment", "tiny-select", "-o", report).exit_code == 0
    html = report.read_text()
    assert KEY not in html
    assert "Base-model selection" in html and "recommended" in html.lower()
    for label in ("tiny-cls", "tiny-8", "tuned", "api"):
        assert f">{label}<" in html


def test_select_tune_records_which_selection_chose_the_base(selected, tiny_model, tiny_beir):
    db = selected["db"]
    result = cli("select", selected["spec"], "--db", db, "--tune", "--candidate", "tiny", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    (info,) = query(db, "SELECT info FROM runs WHERE experiment = 'tiny-select' AND variant = 'base'")[0]
    chosen = json.loads(info)["selected_by"]
    (selection_run,) = query(db, "SELECT run_id FROM runs WHERE variant = 'select:tiny' AND status = 'ok'")[0]
    assert chosen["candidate"] == "tiny" and chosen["selection_run"] == selection_run
    assert "cheapest" in chosen["rule"]
    refused = cli("select", selected["spec"], "--db", db, "--tune", "--candidate", "api")
    assert refused.exit_code == 2 and "cannot be fine-tuned" in refused.output


def test_a_failing_candidate_is_recorded_and_the_others_still_run(tmp_path, tiny_model, tiny_beir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with FakeEmbeddings(key=KEY) as fake:
        candidates = [
            {"label": "tiny", "model": {"base": str(tiny_model), "max_seq_length": 32}},
            {"label": "missing", "model": {"base": str(tmp_path / "no-such-model")}},
            {"label": "no-run", "run": "never-ran"},
            {"label": "api", "api": _api(fake.url)},
        ]
        spec = _select_spec(tiny_model, tiny_beir, tmp_path / "s.yaml", candidates)
        result = cli("select", spec, "--db", tmp_path / "r.duckdb")
    assert result.exit_code == 1
    rows = dict(query(tmp_path / "r.duckdb", "SELECT variant, status FROM runs"))
    assert rows == {"select:tiny": "ok", "select:missing": "failed", "select:no-run": "failed", "select:api": "failed"}
    errors = dict(query(tmp_path / "r.duckdb", "SELECT variant, error FROM runs WHERE status = 'failed'"))
    assert "no-such-model" in errors["select:missing"]
    assert "never-ran" in errors["select:no-run"] and "embx run" in errors["select:no-run"]
    assert f"refused the API key from {KEY_ENV}" in errors["select:api"]
    assert "sk-wrong" not in errors["select:api"]  # the fake endpoint echoes the key: scrubbed


def test_duplicate_labels_are_a_located_spec_error(tmp_path, tiny_model, tiny_beir):
    candidates = [{"label": "a", "model": {"base": str(tiny_model)}}, {"label": "a", "run": "x"}]
    spec = _select_spec(tiny_model, tiny_beir, tmp_path / "dup.yaml", candidates)
    result = cli("validate", spec)
    assert result.exit_code == 2
    assert "dup.yaml" in result.output and "select.candidates" in result.output and "label 'a'" in result.output


BILINGUAL = Path(__file__).parent / "data" / "bilingual"


def test_bilingual_selection_runs_dense_and_bm25_and_counts_languages(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeEmbeddings(key=KEY) as fake:
        candidates = [
            {"label": "tiny", "model": {"base": str(tiny_model), "max_seq_length": 32}, "languages": ["en"]},
            {"label": "api", "api": _api(fake.url), "languages": ["en", "zh"]},
        ]
        spec = _select_spec(
            tiny_model, BILINGUAL, tmp_path / "bi.yaml", candidates, eval={"retrievers": ["dense", "bm25"]}
        )
        result = cli("select", spec, "--db", tmp_path / "r.duckdb")
    assert result.exit_code == 0, result.output
    table = selection_table(store.load_experiment(tmp_path / "r.duckdb", "tiny-select"))
    rows = {r.label: r for r in table.rows}
    assert table.queries == 8
    assert table.bm25 is not None and table.bm25 > 0.7  # Chinese queries match Chinese passages once segmented
    tiny, api = rows["tiny"].profile["languages"], rows["api"].profile["languages"]
    assert tiny["queries"]["zh"] >= 3 and tiny["queries"]["en"] >= 3
    assert tiny["undeclared"] == {"zh": tiny["queries"]["zh"]} and api["undeclared"] == {}
    assert set(api["by_language"]) == {"zh", "en"}
    cells = {row[0]: row[-1] for row in selection_cells(table)["cost"][1]}
    assert cells["tiny"] == f"en; not declared: {tiny['queries']['zh']} zh" and cells["api"] == "en,zh"


def test_the_selection_table_is_displayed_in_headless_chromium(selected, tmp_path):
    """The report's selection tables as chromium lays them out: every candidate row visible, with its cells."""
    from selenium.webdriver.common.by import By
    from test_report import chromium_driver

    report = tmp_path / "select.html"
    assert cli("report", "--db", selected["db"], "--experiment", "tiny-select", "-o", report).exit_code == 0
    driver = chromium_driver(tmp_path / "profile")
    try:
        driver.get(report.as_uri())
        heading = driver.find_element(By.XPATH, "//h3[text()='Base-model selection']")
        assert heading.is_displayed()
        tables = driver.find_elements(By.CSS_SELECTOR, "table.selection")
        assert len(tables) == 3
        quality = [
            [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            for row in tables[0].find_elements(By.TAG_NAME, "tr")[1:]
        ]
        assert {cells[0] for cells in quality} == {"tiny", "tiny-cls", "tiny-8", "tuned", "api"}
        assert all(cells[1] != "-" and cells[2].startswith("[") for cells in quality)
        assert sum(cells[3] == "leader" for cells in quality) == 1
        assert all(t.size["width"] > 300 and t.is_displayed() for t in tables)
        driver.save_screenshot(str(tmp_path / "select.png"))
    finally:
        driver.quit()


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_bundled_select_spec_with_an_api_candidate(tmp_path, monkeypatch):
    """As a new user: `embx run specs/medical.yaml` (one epoch), then specs/medical-select.yaml with one API candidate
    (the fake endpoint) added: five candidates, the tuned run's model among them, the table printed and reported."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(KEY_ENV, KEY)
    db = tmp_path / "results.duckdb"
    assert cli("run", REPO / "specs/medical.yaml", "--db", db, "--set", "train.epochs=1").exit_code == 0
    from ruamel.yaml import YAML

    bundled = YAML(typ="safe").load((REPO / "specs/medical-select.yaml").read_text())
    with FakeEmbeddings(key=KEY) as fake:
        candidates = [*bundled["select"]["candidates"], {"label": "api", "api": _api(fake.url)}]
        spec = dump_yaml(
            {
                "extends": str(REPO / "specs/medical-select.yaml"),
                "select": {"candidates": candidates, "throughput_sample": 32},
            },
            tmp_path / "medical-select-api.yaml",
        )
        result = cli("select", spec, "--db", db)
    assert result.exit_code == 0, result.output
    table = selection_table(store.load_experiment(db, "medical-select"))
    assert {r.label: r.status for r in table.rows} == {
        "minilm": "ok",
        "minilm-cls": "ok",
        "minilm-128": "ok",
        "medical-tuned": "ok",
        "api": "ok",
    }
    rows = {r.label: r for r in table.rows}
    assert rows["minilm"].metrics["ndcg@10"] == pytest.approx(0.7413, abs=0.02)  # README's base-model figure
    assert rows["medical-tuned"].metrics != rows["minilm"].metrics
    assert "recommended:" in result.output
    report = tmp_path / "report.html"
    assert cli("report", "--db", db, "--experiment", "medical-select", "-o", report).exit_code == 0
    assert "Base-model selection" in report.read_text()


def test_an_api_candidate_sends_each_side_its_own_request_fields(tmp_path, tiny_model, tiny_beir, monkeypatch):
    from runner.data.beir import load_beir

    monkeypatch.setenv(KEY_ENV, KEY)
    sides = {"query_extra_body": {"input_type": "query"}, "passage_extra_body": {"input_type": "document"}}
    with FakeEmbeddings(key=KEY) as fake:
        candidates = [{"label": "api", "api": _api(fake.url, **sides)}]
        spec = _select_spec(tiny_model, tiny_beir, tmp_path / "s.yaml", candidates)
        assert cli("select", spec, "--db", tmp_path / "r.duckdb").exit_code == 0
        sent = list(zip(fake.bodies, fake.inputs))
    data = load_beir(tiny_beir, ["dev", "test"])
    asked = {side["input_type"]: set() for side in sides.values()}
    for body, texts in sent:
        asked[body.get("input_type")].update(texts)
    assert asked["document"] == set(data.corpus.values())  # every passage as a document, no query among them
    assert asked["query"] and asked["query"] <= set(data.queries.values())
