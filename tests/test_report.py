"""The HTML report: ablation table, significance, charts, escaping, failed variants, and a real browser render."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import run_record, unavailable

from runner.cli import main
from runner.report import build_report, conclude, paired_test

XSS_QUERY = "<script>alert('q')</script> what helps <b>itch</b>"
XSS_DOC = "<img src=x onerror=\"alert('d')\"> dermal therapy <script>alert(1)</script>"


@pytest.fixture(scope="module")
def ablation_db(tmp_path_factory, tiny_model, tiny_beir):
    """A tiny ablation (reference + 2 variants) whose data carries HTML/script text, run once for the module."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("report")
    data = root / "beir"
    shutil.copytree(tiny_beir, data)
    for name, field, target, text in (
        ("queries.jsonl", "_id", "q-skin-treatment-0", XSS_QUERY),
        ("corpus.jsonl", "_id", "skin-treatment", XSS_DOC),
    ):
        rows = [json.loads(line) for line in (data / name).read_text().splitlines()]
        for row in rows:
            if row[field] == target:
                row["text"] = text
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = root / "spec.yaml"
    spec.write_text(
        f"""name: tiny-ablation
recipe: manual
model: {{base: {tiny_model}, max_seq_length: 32}}
data: {{path: {data}}}
train: {{epochs: 2, batch_size: 8, learning_rate: 1.0e-3, early_stopping: {{patience: 2}}}}
eval: {{batch_size: 16, retrievers: [dense, bm25, hybrid]}}
ablate:
  factors:
    train.learning_rate: [1.0e-4]
    data.limit: [20]
"""
    )
    db = root / "r.duckdb"
    result = CliRunner().invoke(main, ["run", str(spec), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return spec, db


def test_paired_test_detects_a_consistent_gain_and_not_noise():
    x = [0.1 * (i % 5) for i in range(60)]
    better = paired_test(x, [v + 0.05 for v in x])
    assert better["mean_diff"] == pytest.approx(0.05)
    assert better["p_value"] < 0.001
    assert better["ci_low"] == pytest.approx(0.05) and better["ci_high"] == pytest.approx(0.05)
    same = paired_test(x, list(x))
    assert same["p_value"] == 1.0
    noise = paired_test([0, 1] * 30, [1, 0] * 30)
    assert noise["p_value"] > 0.5 and noise["ci_low"] < 0 < noise["ci_high"]


def test_conclusion_is_generated_from_the_numbers():
    text = conclude(
        "negatives.mode 'random' -> 'hard'",
        "ndcg@10",
        0.5,
        0.55,
        {"p_value": 0.01, "ci_low": 0.02, "ci_high": 0.08, "n": 100},
    )
    assert "raised ndcg@10 by 0.0500 (+10.0%)" in text and "significant at 5%" in text and "100" in text
    text = conclude("x", "ndcg@10", 0.5, 0.49, {"p_value": 0.4, "ci_low": -0.03, "ci_high": 0.01, "n": 10})
    assert "lowered" in text and "not significant" in text


def test_report_has_table_charts_examples_and_escapes_dataset_text(ablation_db, tmp_path):
    spec, db = ablation_db
    html = build_report([db])
    assert "Experiment tiny-ablation" in html
    assert html.count('<tr class="variant">') == 2 and html.count('<tr class="reference">') == 1
    assert "train.learning_rate" in html and "data.limit" in html
    assert "<svg" in html and html.count('class="chart factor"') == 2 and 'class="chart curves"' in html
    # bm25 and hybrid beside dense, for each of the 3 variants
    others = html[html.index('<table class="others">') :].split("</table>")[0]
    assert others.count(">bm25<") == 3 and others.count(">hybrid<") == 3
    # dataset text is shown as text, never as markup
    assert "<script>alert" not in html and 'onerror="alert' not in html
    assert "&lt;script&gt;" in html or "&lt;img" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # self-contained: nothing fetched
    assert "<link" not in html and "<script" not in html


def test_rerun_skips_finished_variants_and_baseline_is_evaluated_once(ablation_db):
    import duckdb
    from click.testing import CliRunner

    spec, db = ablation_db
    con = duckdb.connect(str(db), read_only=True)
    before = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    con.close()
    result = CliRunner().invoke(main, ["run", str(spec), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == before == 3
    runs = con.execute("SELECT run_id, info, timings FROM runs WHERE status = 'ok' ORDER BY started_at").fetchall()
    con.close()
    assert len(runs) == 3
    origins = {json.loads(info)["baseline_from"]["test"] for _, info, _ in runs}
    assert origins == {runs[0][0]}  # the first run evaluated the base model; the others reused it
    assert all(json.loads(t)["eval_base"] < json.loads(runs[0][2])["eval_base"] for _, _, t in runs[1:])


def test_failed_variant_is_shown_as_failed(ablation_db, tmp_path):
    from runner import store

    spec, db = ablation_db
    failed_db = tmp_path / "failed.duckdb"
    shutil.copy(db, failed_db)
    rec = run_record(
        "20991231-000000-ffffff",
        experiment="tiny-ablation",
        spec_path=str(spec),
        spec_hash="x",
        variant='negatives.mode="hard"',
        changes={"negatives.mode": "hard"},
    )
    store.start_run(failed_db, rec)
    store.end_run(failed_db, rec.run_id, status="failed", error="RuntimeError: out of memory <b>", timings={}, info={})
    html = build_report([failed_db])
    assert 'class="failed"' in html and "RuntimeError: out of memory &lt;b&gt;" in html
    assert "no result: the run failed" in html


def chromium_driver(profile: Path):
    """A headless Debian chromium under chromedriver (selenium), or skip (fail under CI) when one is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        unavailable("chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1300,2000",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def drawn_charts(html: Path, tmp_path: Path) -> dict[str, list[dict]]:
    """Open a report in headless chromium; per chart class (factor, curves, search-trials...), what each chart's
    SVG drew: its rendered size and its pixels (grey-level spread, share of non-white pixels)."""
    from io import BytesIO

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver = chromium_driver(tmp_path / "profile")
    charts: dict[str, list[dict]] = {}
    try:
        driver.get(html.as_uri())
        assert driver.find_element(By.CSS_SELECTOR, "h1").text == "embx report"
        shot = Path(os.environ.get("EMBX_SCREENSHOT_DIR", tmp_path)) / f"{html.stem}.png"
        driver.save_screenshot(str(shot))
        for figure in driver.find_elements(By.CSS_SELECTOR, "figure.chart"):
            kind = figure.get_attribute("class").split()[-1]
            svg = figure.find_element(By.CSS_SELECTOR, "svg")
            # Where the browser laid the chart out (viewport pixels, after scrolling it into view), and the
            # pixels there in a screenshot of the viewport.
            box = driver.execute_script(
                "const e = arguments[0]; e.scrollIntoView(); const r = e.getBoundingClientRect();"
                "return {x: r.left, y: r.top, width: r.width, height: r.height, view: window.innerWidth};",
                svg,
            )
            page = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("L")
            scale = page.width / box["view"]
            image = page.crop(
                tuple(round(v * scale) for v in (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
            )
            pixels = np.asarray(image, dtype=float) if image.width and image.height else np.full(1, 255.0)
            charts.setdefault(kind, []).append(
                {
                    "displayed": svg.is_displayed(),
                    "size": {"width": box["width"], "height": box["height"]},
                    "spread": float(pixels.std()),
                    "ink": float((pixels < 200).mean()),
                }
            )
    finally:
        driver.quit()
    return charts


def assert_drawn(chart: dict) -> None:
    """A chart rendered at a real size with something drawn in it: not blank, not a solid block."""
    assert chart["displayed"], chart
    assert chart["size"]["width"] > 100 and chart["size"]["height"] > 100, chart
    assert chart["spread"] > 10, chart  # a blank (all-white) region has none
    assert 0.005 < chart["ink"] < 0.6, chart


def test_report_charts_are_drawn_in_headless_chromium(ablation_db, tmp_path):
    """`embx report` writes a page whose charts chromium really draws: both factor charts and the training
    curves have a rendered size and non-blank pixels (skipped without chromium, failed under CI)."""
    spec, db = ablation_db
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    charts = drawn_charts(out, tmp_path)
    assert {kind: len(found) for kind, found in charts.items()} == {"factor": 2, "curves": 1}
    for found in charts.values():
        for chart in found:
            assert_drawn(chart)


FAST = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}


@pytest.fixture(scope="module")
def two_stores(make_spec, tmp_path_factory):
    """Experiment alpha in one store; experiments beta and gamma in another (one short run each)."""
    from helpers import cli

    root = tmp_path_factory.mktemp("stores")
    stores = {"one": root / "one.duckdb", "two": root / "two.duckdb"}
    for name, db in (("alpha", "one"), ("beta", "two"), ("gamma", "two")):
        spec = make_spec(root / f"{name}.yaml", name=name, data={"limit": 8}, train=FAST)
        assert cli("run", spec, "--db", stores[db]).exit_code == 0
    return stores


def sections(html: str) -> list[str]:
    """The experiments the report has a section for, in order."""
    return re.findall(r"<h2>Experiment ([^<]+)</h2>", html)


def test_report_over_several_stores_and_experiments(two_stores, tmp_path):
    """`embx report --db A --db B --experiment X --experiment Y` shows each named experiment, wherever it is
    stored, side by side; without --experiment only the latest experiment of the first store; an experiment in
    none of the stores is an error (exit 2)."""
    from helpers import cli

    one, two = str(two_stores["one"]), str(two_stores["two"])
    out = tmp_path / "report.html"

    def report(*args):
        result = cli("report", *args, "-o", out)
        return result, out.read_text() if result.exit_code == 0 else ""

    result, html = report("--db", one, "--db", two, "--experiment", "alpha", "--experiment", "gamma")
    assert result.exit_code == 0, result.output
    assert sections(html) == ["alpha", "gamma"]
    side = html[html.index("<h2>Side by side</h2>") : html.index('<section class="experiment"')]
    assert side.count("<tr>") == 3 and ">alpha<" in side and ">gamma<" in side  # header + two experiments
    assert one in html and two in html  # the page names the stores it read

    result, html = report("--db", two, "--experiment", "beta", "--experiment", "gamma")
    assert result.exit_code == 0 and sections(html) == ["beta", "gamma"]
    result, html = report("--db", one, "--db", two)
    assert result.exit_code == 0 and sections(html) == ["alpha"] and "Side by side" not in html

    result, _ = report("--db", one, "--experiment", "beta")
    assert result.exit_code == 2 and "no experiment 'beta'" in result.stderr


def test_report_search_section_after_embx_search(make_spec, tmp_path):
    """After a tiny `embx search` (3 trials, then the best spec on test), the report has the study's section:
    every trial in the trials table, the best parameters, and a trials chart that chromium draws."""
    from helpers import cli, query

    space = {
        "trials": 3,
        "objective": "ndcg@10",
        "sampler": "random",
        "params": {
            "train.learning_rate": {"low": 1e-4, "high": 3e-3, "log": True},
            "train.batch_size": {"choices": [4, 8]},
        },
    }
    spec = make_spec(tmp_path / "tune.yaml", name="tune", data={"limit": 16}, train=FAST, search=space)
    db = tmp_path / "results.duckdb"
    result = cli("search", spec, "--db", db)
    assert result.exit_code == 0, result.output
    out = tmp_path / "report.html"
    assert cli("report", "--db", db, "-o", out).exit_code == 0
    html = out.read_text()
    assert "<h3>Search: study tune</h3>" in html
    assert "Objective: dev ndcg@10 (maximize)" in html and "3 trials" in html
    trials = html[html.index("<summary>trials</summary>") :].split("</table>")[0]
    runs = dict(query(db, "SELECT trial, run_id FROM runs WHERE variant LIKE 'trial %'"))
    assert sorted(runs) == [0, 1, 2] and all(run_id in trials for run_id in runs.values())
    best = html[html.index('<table class="search-best">') :].split("</table>")[0]
    assert "train.learning_rate" in best and "train.batch_size" in best
    ((final,),) = query(db, "SELECT run_id FROM runs WHERE variant = 'best of tune'")
    assert f"by run {final}" in html
    charts = drawn_charts(out, tmp_path)
    assert len(charts["search-trials"]) == 1
    for found in charts.values():
        for chart in found:
            assert_drawn(chart)


def test_a_single_run_is_titled_as_a_run_with_its_settings_and_overrides(make_spec, tmp_path):
    """One run (no ablation): "Run <id>", no "best variant", its hyperparameters and --set overrides shown; a
    run of one optimizer step has no loss curve to draw, and the chart says so."""
    from helpers import cli

    db = tmp_path / "r.duckdb"
    spec = make_spec(tmp_path / "one.yaml", name="one", train=FAST)
    assert cli("run", spec, "--db", db, "--set", "data.limit=8").exit_code == 0
    html = build_report([db])
    (run_id,) = re.findall(r"<h3>Run (\d{8}-\d{6}-[0-9a-f]{6})</h3>", html)
    assert "Ablation table" not in html and "best variant" not in html
    settings = html.split('<p class="settings">')[1].split("</p>")[0]
    assert "train.learning_rate <b>0.001</b>" in settings and "negatives.mode <b>in-batch</b>" in settings
    assert "--set <b>data.limit=8</b>" in settings
    curves = html.split('class="chart curves"')[1].split("</figure>")[0]
    assert "too little training to draw a curve" in curves and "base: 1 loss point(s)" in curves


def test_ablation_charts_have_intervals_and_mark_the_kept_epoch(ablation_db):
    """Factor charts: a point and a 95% interval per value, on an axis zoomed to them; the dev chart is on the
    early-stopping metric with the kept epoch starred."""
    from runner import store
    from runner.report import analyse

    _, db = ablation_db
    section = analyse(store.load_experiment(db, "tiny-ablation"))
    ref = section["reference"]
    for v in section["variants"]:
        assert v.best_epoch in (1, 2) and v.best_epoch == v.runs[0]["info"]["train"]["best_epoch"]
    html = build_report([db])
    assert "95% intervals of the" in html
    curves = html.split('class="chart curves"')[1].split("</figure>")[0]
    assert "dev ndcg@10 (epoch 0 = base model; \u2605 = epoch kept)" in curves  # eval.main
    # the limit variant's interval is the reference's value plus the paired interval of the difference
    limit = next(v for v in section["variants"] if v.changes == {"data.limit": 20})
    factor = next(c for c in section["factor_charts"] if c["title"] == "data.limit")
    assert factor["svg"].count('id="LineCollection_') == 2  # an interval each: the reference and the variant
    assert limit.test["ci_low"] <= limit.tuned["ndcg@10"] - ref.tuned["ndcg@10"] <= limit.test["ci_high"]
