#!/usr/bin/env bash
# GPU check, step 2 of 2 (device tool: carry .gpu/whl2; run within 30 s of step 1 on the same warm machine):
# install embx's remaining dependencies and run `embx run` with the same settings as the peer.
# $OUT gets embx_financial_h100.json (`embx show RUN_ID --json`: the one run, with metrics, timings and info, which
# bench/compare.py reads), embx_ls.json (`embx ls --json`, the list it takes the run id from) and machine.json (the
# CPU, bench/machine.py). Then, where the peer's file from step 1 is:
#   python bench/compare.py --peer bench/results/peer_financial_h100.json \
#     --embx bench/results/embx_financial_h100.json --out bench/results/compare_financial_h100.json
set -euo pipefail
export PYTHONUNBUFFERED=1
[ -d /tmp/embx-gpu/model ] && [ -d /tmp/embx-gpu/site ] || { echo "step 1's files are gone (machine was given back): rerun step 1"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/embx-gpu/site .gpu/whl2/*.whl
export PYTHONPATH="/tmp/embx-gpu/site:$PWD"
python3 bench/machine.py > "$OUT/machine.json"
python3 -m runner.cli run bench/specs/financial_qa_10k.yaml --db "$OUT/gpu.duckdb" \
  --set data.path=/tmp/embx-gpu/financial_qa_10k --set model.base=/tmp/embx-gpu/model/all-MiniLM-L6-v2-fp16
python3 -m runner.cli ls --db "$OUT/gpu.duckdb" --json > "$OUT/embx_ls.json"
run_id=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[0]['run_id'])" "$OUT/embx_ls.json")
python3 -m runner.cli show "$run_id" --db "$OUT/gpu.duckdb" --json > "$OUT/embx_financial_h100.json"
