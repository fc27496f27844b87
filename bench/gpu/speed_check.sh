#!/usr/bin/env bash
# GPU check (issues 7 and 21), run from the repo root on the GPU machine (device tool: carry .gpu/speed, made here
# by bench/gpu/pack.sh): installs the carried wheels, unpacks the data and the fp16 model (cast to fp32 on load),
# then runs bench/speed.py (peer and embx, one after the other) on financial_qa_10k with the issue's settings:
# full train split (4,954 pairs), batch 128, max_seq_length 256, 1 epoch, lr 2e-5. Then, while the time allows,
# embx alone with train.compile=true, and the exact-search scaling points of the index issue (bench/exact_scale.py on
# the GPU: 100k and 1M passages, in memory and block by block from disk). Results go to $OUT: $SPEED_NAME.json and
# .md, ${SPEED_NAME}_compile.json, exact_scale.json; bench/gpu/table.py prints them as one table at the end.
# Extra arguments go to speed.py, e.g.
#   bash bench/gpu/speed_check.sh --embx-set train.compile=true
# Environment: OUT (required), PACK (default .gpu/speed), SPEED_NAME (result name, default speed_financial_h100),
# SPEED_TIMEOUT (seconds for speed.py, default 450), SKIP_COMPILE=1, SKIP_SCALE=1.
# DRY_RUN=1: the whole chain on this machine's CPU at toy sizes, so it cannot rot (CI runs it through
# tests/test_bench_gpu.py): the wheels are checked, not installed (they are for the GPU image's Python 3.12; each
# must be the version installed here), the data and model are unpacked, speed.py trains 64 pairs and scores 20
# queries over 200 passages, exact_scale.py searches 2,000 passages, and the table is printed.
set -euo pipefail
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT to the output folder}"
PACK=${PACK:-.gpu/speed}
WORK=${SPEED_WORK:-/tmp/embx-speed}
NAME=${SPEED_NAME:-speed_financial_h100}
PYTHON=${PYTHON:-python3}
started=$SECONDS
[ -d "$PACK/wheels" ] && [ -f "$PACK/model/model.safetensors.xz" ] && [ -f "$PACK/financial_qa_10k.tar.xz" ] \
  || { echo "$PACK is incomplete: run bench/gpu/pack.sh and carry .gpu/speed" >&2; exit 3; }
mkdir -p "$WORK" "$OUT"

echo "== install wheels into $WORK/site"
if [ -n "${DRY_RUN:-}" ]; then
  "$PYTHON" - "$PACK"/wheels/*.whl <<'EOF'
import importlib.metadata as m
import re
import sys
from pathlib import Path

wrong = []
for wheel in sys.argv[1:]:
    name, version = Path(wheel).name.split("-")[:2]
    here = m.version(re.sub(r"[-_.]+", "-", name))
    print(f"{name} {version} (installed here: {here})")
    if here != version:
        wrong.append(f"{name}: packed {version}, installed {here}")
if wrong:
    sys.exit("the pack is stale, rerun bench/gpu/pack.sh: " + "; ".join(wrong))
EOF
else
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$WORK/site" "$PACK"/wheels/*.whl
fi

echo "== unpack data and model into $WORK"
rm -rf "$WORK/financial_qa_10k" "$WORK/model"
tar xJf "$PACK/financial_qa_10k.tar.xz" -C "$WORK"
mkdir -p "$WORK/model"
(cd "$PACK/model" && tar cf - --exclude='*.xz' .) | tar xf - -C "$WORK/model"
for packed in "$PACK"/model/*.xz; do
  "$PYTHON" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'), 1 << 24)" \
    "$packed" "$WORK/model/$(basename "$packed" .xz)"
done
ls -l "$WORK/model" "$WORK/financial_qa_10k"
echo "install and unpack: $((SECONDS - started)) s"
if [ -n "${DRY_RUN:-}" ]; then
  export PYTHONPATH="$PWD"
  DEVICE=cpu
  SPEED_ARGS=(--train-limit 64 --corpus-limit 200 --query-limit 20 --batch-size 16 --max-seq-length 64 --epochs 1)
  SCALE_SIZES=(2000)
  SKIP_COMPILE=1
else
  export PYTHONPATH="$WORK/site:$PWD"
  DEVICE=cuda
  SPEED_ARGS=(--batch-size 128 --max-seq-length 256 --epochs 1 --lr 2e-5)
  SCALE_SIZES=(100000 1000000)
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
timeout "${SPEED_TIMEOUT:-450}" "$PYTHON" bench/speed.py "$WORK/financial_qa_10k" --device "$DEVICE" \
  --model "$WORK/model" "${SPEED_ARGS[@]}" --out "$OUT/$NAME.json" "$@" 2>&1 \
  | tr '\r' '\n' | grep --line-buffered -vE "(it|s)/it\]|it/s\]|example/s\]|^\s*$"
rc=${PIPESTATUS[0]}
set -e
echo "speed.py exit code $rc; $((SECONDS - started)) s in all"
# The same embx side again with torch.compile (train.compile), while the 8-minute budget allows.
if [ "$rc" = 0 ] && [ -z "${SKIP_COMPILE:-}" ] && [ $((SECONDS - started)) -lt 300 ]; then
  echo "== bench/speed.py, embx with train.compile=true"
  set +e
  timeout $((460 - (SECONDS - started))) "$PYTHON" bench/speed.py "$WORK/financial_qa_10k" --device "$DEVICE" \
    --model "$WORK/model" "${SPEED_ARGS[@]}" --sides embx \
    --embx-set train.compile=true --out "$OUT/${NAME}_compile.json" "$@" 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -vE "(it|s)/it\]|it/s\]|example/s\]|^\s*$"
  echo "compile run exit code ${PIPESTATUS[0]}; $((SECONDS - started)) s in all"
  set -e
  [ -f "$OUT/${NAME}_compile.md" ] && cat "$OUT/${NAME}_compile.md"
fi
# The exact-search scaling points of the index issue, while the time allows (about 2 minutes on an H100).
if [ "$rc" = 0 ] && [ -z "${SKIP_SCALE:-}" ] && { [ -n "${DRY_RUN:-}" ] || [ $((SECONDS - started)) -lt 420 ]; }; then
  echo "== bench/exact_scale.py on $DEVICE: ${SCALE_SIZES[*]} passages"
  set +e
  timeout 240 "$PYTHON" bench/exact_scale.py --device "$DEVICE" --sizes "${SCALE_SIZES[@]}" --out "$OUT/exact_scale.json"
  echo "exact_scale.py exit code $?; $((SECONDS - started)) s in all"
  set -e
fi
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null || true
if [ "$rc" = 0 ]; then
  echo "== the check, in one table"
  "$PYTHON" bench/gpu/table.py "$OUT" --speed "$NAME"
fi
exit "$rc"
