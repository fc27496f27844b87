#!/usr/bin/env bash
# GPU check, step 1 of 2 (device tool: carry .gpu/model .gpu/whl1 .gpu/data): install the pinned
# transformers/sentence-transformers wheels, unpack financial_qa_10k and run the plain
# sentence-transformers peer (bf16) on it. Leaves /tmp/embx-gpu (site, model, data) for step 2.
set -euo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/embx-gpu/site .gpu/whl1/*.whl
mkdir -p /tmp/embx-gpu && tar xzf .gpu/data/financial_qa_10k.tgz -C /tmp/embx-gpu/ && cp -r .gpu/model /tmp/embx-gpu/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
export PYTHONPATH=/tmp/embx-gpu/site
[ -n "${SKIP_PEER:-}" ] && exit 0
python3 -c "import torch, transformers, sentence_transformers as s; print(torch.__version__, transformers.__version__, s.__version__)"
python3 bench/peer_st.py /tmp/embx-gpu/financial_qa_10k --model /tmp/embx-gpu/model/all-MiniLM-L6-v2-fp16 --bf16 \
  --out "$OUT/peer_financial_h100.json" 2>&1 | grep -v "it/s\]" | tail -40
