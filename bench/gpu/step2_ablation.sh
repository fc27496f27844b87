#!/usr/bin/env bash
# GPU: the financial_qa_10k ablation (bench/specs/financial_ablation.yaml) after step1_peer.sh (SKIP_PEER=1),
# within 30 s of it on the same warm machine (device tool: carry .gpu/whl2). The store comes back in $OUT;
# render the report where Chromium is: embx report --db ablation.duckdb -o financial_ablation.html
set -euo pipefail
export PYTHONUNBUFFERED=1
[ -d /tmp/embx-gpu/model ] && [ -d /tmp/embx-gpu/site ] || { echo "step 1's files are gone: rerun step 1"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/embx-gpu/site .gpu/whl2/*.whl
export PYTHONPATH="/tmp/embx-gpu/site:$PWD"
run() {
  python3 -m runner.cli run bench/specs/financial_ablation.yaml --db "$OUT/ablation.duckdb" \
    --set data.path=/tmp/embx-gpu/financial_qa_10k --set model.base=/tmp/embx-gpu/model/all-MiniLM-L6-v2-fp16
}
time run
echo "--- rerun: every variant is already ok"
time run
