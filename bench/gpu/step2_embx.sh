#!/usr/bin/env bash
# GPU check, step 2 of 2 (device tool: carry .gpu/whl2; run within 30 s of step 1 on the same warm machine):
# install embx's remaining dependencies and run `embx run` with the same settings as the peer.
set -euo pipefail
export PYTHONUNBUFFERED=1
[ -d /tmp/embx-gpu/model ] && [ -d /tmp/embx-gpu/site ] || { echo "step 1's files are gone (machine was given back): rerun step 1"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/embx-gpu/site .gpu/whl2/*.whl
export PYTHONPATH="/tmp/embx-gpu/site:$PWD"
python3 -m runner.cli run bench/specs/financial_qa_10k.yaml --db "$OUT/gpu.duckdb" \
  --set data.path=/tmp/embx-gpu/financial_qa_10k --set model.base=/tmp/embx-gpu/model/all-MiniLM-L6-v2-fp16
python3 -m runner.cli ls --db "$OUT/gpu.duckdb" --json > "$OUT/embx_financial_h100.json"
python3 -m runner.cli show "$(python3 -c "import json;print(json.load(open('$OUT/embx_financial_h100.json'))[0]['run_id'])")" \
  --db "$OUT/gpu.duckdb" --json > "$OUT/embx_financial_h100_run.json"
