#!/usr/bin/env bash
# GPU speed check (issue 7), run from the repo root on the GPU machine (device tool: carry .gpu/speed, made here
# by bench/gpu/pack.sh): installs the carried wheels, unpacks the data and the fp16 model (cast to fp32 on load),
# then runs bench/speed.py (peer and embx, one after the other) on financial_qa_10k with the issue's settings:
# full train split (4,954 pairs), batch 128, max_seq_length 256, 1 epoch, lr 2e-5. Results go to $OUT:
# speed_financial_h100.json and .md (the table is also printed). Extra arguments go to speed.py, e.g.
#   bash bench/gpu/speed_check.sh --embx-set train.compile=true
# Then, if under 300 s have passed, embx alone again with train.compile=true (${SPEED_NAME}_compile.json; SKIP_COMPILE=1
# skips it). Environment: OUT (required), SPEED_NAME (result name, default speed_financial_h100), SPEED_TIMEOUT
# (seconds for speed.py, default 450), DRY_RUN=1 (unpack only: no install, no run; for checking the script elsewhere).
set -euo pipefail
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT to the output folder}"
PACK=.gpu/speed
WORK=${SPEED_WORK:-/tmp/embx-speed}
NAME=${SPEED_NAME:-speed_financial_h100}
PYTHON=${PYTHON:-python3}
started=$SECONDS
[ -d "$PACK/wheels" ] && [ -f "$PACK/model/model.safetensors.xz" ] && [ -f "$PACK/financial_qa_10k.tgz" ] \
  || { echo "$PACK is incomplete: run bench/gpu/pack.sh and carry .gpu/speed" >&2; exit 3; }
mkdir -p "$WORK" "$OUT"

echo "== install wheels into $WORK/site"
if [ -n "${DRY_RUN:-}" ]; then
  echo "DRY_RUN: $PYTHON -m pip install -q --no-index --no-deps --no-compile --target $WORK/site $PACK/wheels/*.whl"
  ls "$PACK"/wheels/*.whl
else
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$WORK/site" "$PACK"/wheels/*.whl
fi

echo "== unpack data and model into $WORK"
rm -rf "$WORK/financial_qa_10k" "$WORK/model"
tar xzf "$PACK/financial_qa_10k.tgz" -C "$WORK"
mkdir -p "$WORK/model"
(cd "$PACK/model" && tar cf - --exclude=model.safetensors.xz .) | tar xf - -C "$WORK/model"
"$PYTHON" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'), 1 << 24)" \
  "$PACK/model/model.safetensors.xz" "$WORK/model/model.safetensors"
ls -l "$WORK/model" "$WORK/financial_qa_10k"
echo "install and unpack: $((SECONDS - started)) s"
export PYTHONPATH="$WORK/site:$PWD"

if [ -n "${DRY_RUN:-}" ]; then
  echo "DRY_RUN: timeout ${SPEED_TIMEOUT:-450} $PYTHON bench/speed.py $WORK/financial_qa_10k --device cuda" \
    "--model $WORK/model --out $OUT/$NAME.json ... $*"
  exit 0
fi

echo "== versions and device"
"$PYTHON" - "$WORK/model" <<'EOF'
import sys

import pydantic
import pytrec_eval  # noqa: F401
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| sentence-transformers", sentence_transformers.__version__, "| tokenizers", tokenizers.__version__,
      "| pydantic", pydantic.__version__)
model = SentenceTransformer(sys.argv[1], device="cpu")
print("fp16 checkpoint loads as", {str(p.dtype) for p in model.parameters()})
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv || true

echo "== bench/speed.py"
set +e
timeout "${SPEED_TIMEOUT:-450}" "$PYTHON" bench/speed.py "$WORK/financial_qa_10k" --device cuda --model "$WORK/model" \
  --batch-size 128 --max-seq-length 256 --epochs 1 --lr 2e-5 --out "$OUT/$NAME.json" "$@" 2>&1 \
  | tr '\r' '\n' | grep --line-buffered -vE "(it|s)/it\]|it/s\]|example/s\]|^\s*$"
rc=${PIPESTATUS[0]}
set -e
echo "speed.py exit code $rc; $((SECONDS - started)) s in all"
# The same embx side again with torch.compile (train.compile), while the 8-minute budget allows.
if [ "$rc" = 0 ] && [ -z "${SKIP_COMPILE:-}" ] && [ $((SECONDS - started)) -lt 300 ]; then
  echo "== bench/speed.py, embx with train.compile=true"
  set +e
  timeout $((460 - (SECONDS - started))) "$PYTHON" bench/speed.py "$WORK/financial_qa_10k" --device cuda \
    --model "$WORK/model" --batch-size 128 --max-seq-length 256 --epochs 1 --lr 2e-5 --sides embx \
    --embx-set train.compile=true --out "$OUT/${NAME}_compile.json" "$@" 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -vE "(it|s)/it\]|it/s\]|example/s\]|^\s*$"
  echo "compile run exit code ${PIPESTATUS[0]}; $((SECONDS - started)) s in all"
  set -e
  [ -f "$OUT/${NAME}_compile.md" ] && cat "$OUT/${NAME}_compile.md"
fi
nvidia-smi --query-gpu=name,memory.used --format=csv || true
if [ -f "$OUT/$NAME.md" ]; then
  echo "== $OUT/$NAME.md"
  cat "$OUT/$NAME.md"
fi
exit "$rc"
