"""Every figure quoted in bench/README.md is found in the committed result file its section names.

bench/README.md puts ``<!-- figures: FILE ... | settings: N ... -->`` before the text that quotes numbers (files
relative to bench/). Each number after such a comment, up to the next comment or heading, must round to a number
in one of its files (JSON: every numeric value and every number inside a string; other files: every number in
the text) at the precision it is quoted with, or be one of the listed settings (chosen, not measured). Numbers in
code (indented blocks, backticks) and in headings are not checked; a number outside every comment's reach fails.
README.md's measured figures are checked one by one below.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MARKER = re.compile(r"^<!--\s*figures:(.*?)-->\s*$")
# A quoted number: not part of a word, an identifier (recall@10, L6, x86_64), a date or an exponent (2e-5).
QUOTED = re.compile(r"(?<![\w@.^/])(?<!e-)\d+(?:,\d{3})*(?:\.\d+)?(?:%|x(?!\w))?(?!\w|\.\d)")
ANY_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T[\d:]+)?")


def _numbers_in_text(text: str) -> set[float]:
    return {float(m.replace(",", "")) for m in ANY_NUMBER.findall(DATE.sub(" ", text))}


def _leaves(value) -> set[float]:
    if isinstance(value, bool):
        return set()
    if isinstance(value, (int, float)):
        return {abs(float(value))}
    if isinstance(value, str):
        return _numbers_in_text(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return set().union(*(_leaves(v) for v in items)) if items else set()


def file_numbers(path: Path) -> set[float]:
    """Every number a result file holds (the text of an HTML report, without its markup and charts)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return _leaves(json.loads(text))
    if path.suffix == ".html":
        text = re.sub(r"<(svg|style|script)\b.*?</\1>", " ", text, flags=re.S)
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return _numbers_in_text(text)


def matches(quoted: str, numbers: set[float]) -> bool:
    """Whether `quoted` (as written: 1,626.5, 60%, 4.97x, 0.0005) is one of `numbers` at its precision."""
    body = quoted.rstrip("%x").replace(",", "")
    decimals = len(body.partition(".")[2])
    scales = (1.0, 100.0) if quoted.endswith("%") else (1.0,)
    return any(f"{v * s:.{decimals}f}" == body for v in numbers for s in scales)


def _prose(line: str) -> str:
    """A README line without inline code, or '' for code blocks, headings and comments."""
    if line.startswith("    ") or line.startswith("#") or line.lstrip().startswith("<!--"):
        return ""
    return re.sub(r"`[^`]*`", " ", line)


def figure_blocks(text: str) -> list[tuple[int, list[str], set[str], str]]:
    """(line, files, settings, text) for each figures comment; raises on numbers outside every comment's reach."""
    blocks: list[tuple[int, list[str], set[str], str]] = []
    current: tuple[int, list[str], set[str], list[str]] | None = None
    stray: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        marker = MARKER.search(line)
        if marker or line.startswith("#"):
            if current:
                blocks.append((current[0], current[1], current[2], "\n".join(current[3])))
            current = None
            if marker:
                files, _, settings = marker.group(1).partition("| settings:")
                current = (number, files.split(), set(settings.split()), [])
            continue
        prose = _prose(line)
        if current:
            current[3].append(prose)
        elif QUOTED.search(DATE.sub(" ", prose)):
            stray.append(f"line {number}: {line.strip()}")
    if current:
        blocks.append((current[0], current[1], current[2], "\n".join(current[3])))
    assert not stray, "numbers with no <!-- figures: ... --> comment naming their file:\n" + "\n".join(stray)
    return blocks


def test_the_number_pattern_skips_identifiers_and_reads_figures():
    line = "lr 2e-5, L^2, recall@10, x86_64, financial_qa_10k, 2048x2048, bf16: 4.97x, 60%, 1,626.5 s, 71.3-89.9."
    assert QUOTED.findall(DATE.sub(" ", line)) == ["4.97x", "60%", "1,626.5", "71.3", "89.9"]
    assert matches("0.0005", {0.00051}) and matches("60%", {0.5984}) and matches("1,626.5", {1626.508})
    assert not matches("466", {267.25, 536.9})


def test_every_bench_readme_figure_is_in_its_result_file():
    blocks = figure_blocks((BENCH / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) > 10
    missing = []
    for line, files, settings, prose in blocks:
        assert files or settings, f"bench/README.md:{line}: a figures comment names no file"
        numbers: set[float] = set()
        for name in files:
            path = BENCH / name
            assert path.is_file(), f"bench/README.md:{line}: {name} is not a committed file under bench/"
            numbers |= file_numbers(path)
        for quoted in QUOTED.findall(DATE.sub(" ", prose)):
            if quoted.rstrip("%x") not in settings and not matches(quoted, numbers):
                missing.append(f"bench/README.md:{line}: {quoted} not in {' '.join(files) or 'any file'}")
    assert not missing, "\n".join(missing)


def test_h100_peer_speed_is_the_recorded_one():
    """The issue's case: the text once quoted the peer at 466 samples/s while its file says 267."""
    peer = json.loads((BENCH / "results" / "peer_financial_h100.json").read_text())
    text = (BENCH / "README.md").read_text()
    assert f"{peer['train_samples_per_s']} samples/s" in text
    assert "466" not in text


def test_readme_bf16_cosine_figure_holds():
    cosine = json.loads((BENCH / "results" / "bf16_cosine_medical_cpu.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert "at least 0.99997" in readme and "bench/results/bf16_cosine_medical_cpu.json" in readme
    assert min(s["min"] for s in cosine["cosine_bf16_vs_fp32"].values()) >= 0.99997
    assert cosine["machine"]["cpu"] and cosine["machine"]["amx_bf16"] is True  # "measured on an Intel Xeon with AMX"


def test_readme_demo_set_counts_match_the_data():
    demo = ROOT / "data" / "medical-demo"
    readme = (ROOT / "README.md").read_text()
    corpus = len((demo / "corpus.jsonl").read_text().splitlines())
    queries = len((demo / "queries.jsonl").read_text().splitlines())
    dev = {row.split("\t")[0] for row in (demo / "qrels" / "dev.tsv").read_text().splitlines()[1:] if row}
    assert f"{corpus} clinical passages and {queries} lay-language questions" in readme
    assert f"dev NDCG@10 (the main metric) over {len(dev)} queries" in readme


def test_derived_speed_figures_are_what_the_summary_script_computes():
    spec = importlib.util.spec_from_file_location("speed_summary", BENCH / "speed_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = json.loads((BENCH / "results" / "speed_cpu_variants_summary.json").read_text())
    assert committed == json.loads(json.dumps(module.summarize()))


@pytest.mark.parametrize(
    ("cpuinfo", "amx", "label"),
    [
        ("model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16 amx_tile\n", True, "yes"),
        ("model name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma\n", False, "no"),
    ],
)
def test_machine_record_names_cpu_and_amx(tmp_path, cpuinfo, amx, label):
    spec = importlib.util.spec_from_file_location("bench_machine", BENCH / "machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    info = module.cpu_info(path)
    assert info["amx_bf16"] is amx and info["flags"]["avx2"] is True
    assert info["label"].endswith(f"AMX bf16: {label}") and info["cpu"] in info["label"]


def test_readme_main_job_and_export_figures_are_in_their_files():
    """The main-job paragraph quotes the current main-job files and export_speed_cpu.json, machine named."""
    readme = (ROOT / "README.md").read_text()
    job = json.loads((BENCH / "results" / "main_job_symmetric_cpu.json").read_text())
    avx2 = json.loads((BENCH / "results" / "main_job_symmetric_avx2_emulated.json").read_text())
    assert f"--avx2`: {avx2['wall_seconds']} s,\ntest NDCG@10 {avx2['test']['tuned']['ndcg@10']:.4f}" in readme
    speed = json.loads((BENCH / "results" / "export_speed_cpu.json").read_text())
    test = job["test"]
    assert f"{job['wall_seconds']} s for the whole command" in readme
    assert f"base model {test['base']['ndcg@10']:.4f}, of the" in readme
    assert f"tuned model {test['tuned']['ndcg@10']:.4f}" in readme
    assert f"best dev epoch {job['train']['best_epoch']} of {job['train']['epochs_run']}" in readme
    assert job["precision"] == "bf16" and job["machine"]["amx_bf16"] is True  # "with AMX bf16 units ... bf16"
    assert f"at {speed['torch_fp32_passages_per_s']} passages/s" in readme
    assert f"{speed['onnx_int8_passages_per_s']} in ONNX int8" in readme
    parity = speed["parity"]
    assert f"{parity['ndcg@10_torch']:.4f} and {parity['ndcg@10_exported']:.4f}" in readme
    assert f"top-10 overlap of {parity['top10_overlap']}" in readme


def test_readme_index_figures_are_in_their_files():
    """README.md's approximate-vs-exact table quotes index_eval_medical_tuned_cpu.json and index_eval_base_cpu.json."""
    readme = (ROOT / "README.md").read_text()
    tuned = next(
        iter(json.loads((BENCH / "results" / "index_eval_medical_tuned_cpu.json").read_text())["targets"].values())
    )
    base = json.loads((BENCH / "results" / "index_eval_base_cpu.json").read_text())["targets"]
    rows = {
        "medical demo, tuned run": tuned,
        "medical demo, base model": base["specs/medical.yaml"],
        "financial_qa_10k, base model": base["bench/specs/financial_qa_10k.yaml"],
    }
    for label, f in rows.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert cells[:3] == [f"{f['passages']:,}", f"{f['queries']:,}", f"{f['exact']['ndcg@10']:.4f}"], label
        assert cells[3:7] == [
            f"{f['ann']['ndcg@10']:.4f}",
            f"{f['exact']['recall@10']:.4f}",
            f"{f['ann']['recall@10']:.4f}",
            f"{f['recall_vs_exact@10']:.4f}",
        ], label
        assert cells[7:] == [
            f"{f['build_seconds']} s",
            f"{f['size_bytes'] / 1e6:.1f} MB",
            f"{f['latency_ms']['p50']} / {f['latency_ms']['p95']} ms",
        ], label
    fin = base["bench/specs/financial_qa_10k.yaml"]
    assert f"returns {fin['recall_vs_exact@10']:.4f} of the exact top 10" in readme
    assert f"costs {fin['exact']['ndcg@10'] - fin['ann']['ndcg@10']:.4f} NDCG@10" in readme
    assert tuned["exact"]["ndcg@10"] == round(
        json.loads((BENCH / "results" / "main_job_cpu.json").read_text())["test"]["tuned"]["ndcg@10"], 4
    )
