#!/usr/bin/env bash
# Builds .gpu/speed/ for bench/gpu/speed_check.sh (device tool: carry .gpu/speed), on this machine, from the repo
# root: bash bench/gpu/pack.sh
#   wheels/   the versions installed here of embx's libraries that the GPU image lacks or has at other versions
#             (transformers, sentence-transformers, ...), for Python 3.12 on x86_64 Linux; no duckdb (the check does
#             not need it). Taken from this environment, so the pack follows pyproject.toml's resolution.
#   model/    the bundled all-MiniLM-L6-v2 with fp16 weights, model.safetensors and tokenizer.json xz-compressed
#             (the weights are cast to fp32 on load)
#   financial_qa_10k.tar.xz   the BEIR data (xz -9e: a third smaller than gzip)
# Fails when .gpu/speed plus the working tree that travels with it exceed the device tool's 64 MiB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PYTHON=${PYTHON:-python}
DEST=${DEST:-.gpu/speed}
DATA=${DATA:-$(cd .. && pwd)/shared/data/financial_qa_10k}
FP16=${FP16:-.gpu/model/all-MiniLM-L6-v2-fp16}   # reused when present, else made from the bundled model
LIMIT=67108864
mkdir -p "$DEST"

version() { "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# 1. Wheels: the versions installed here of the model stack (transformers, tokenizers, huggingface_hub,
#    sentence-transformers, datasets), of what embx's training/eval path imports (runner/spec: pydantic;
#    runner/evaluate.py: pytrec_eval; spec overrides: ruamel.yaml) and of datasets' own pins (dill, multiprocess).
#    torch, numpy, rich, pyarrow, pandas, accelerate... are on the GPU image.
specs=()
for name in transformers tokenizers huggingface_hub sentence-transformers datasets dill multiprocess pydantic \
  pydantic_core annotated_types typing_inspection pytrec_eval_terrier ruamel.yaml; do
  specs+=("$name==$(version "$name")")
done
echo "== wheels: ${specs[*]}"
rm -rf "$DEST/wheels"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$DEST/wheels" "${specs[@]}"
if ls "$DEST/wheels" | grep -qi duckdb; then echo "duckdb must not be packed" >&2; exit 1; fi
ls -l "$DEST/wheels"

# 2. Model: fp16 weights (half the bytes), xz-compressed.
if [ ! -f "$FP16/model.safetensors" ]; then
  echo "== making the fp16 model in $FP16"
  "$PYTHON" - "$FP16" <<'EOF'
import sys

from sentence_transformers import SentenceTransformer

from runner.models import resolve_model

model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2").location, device="cpu")
model.half().save(sys.argv[1])
EOF
fi
rm -rf "$DEST/model.tmp" && mkdir -p "$DEST/model.tmp"
(cd "$FP16" && tar cf - --exclude=model.safetensors .) | tar xf - -C "$DEST/model.tmp"
if [ -f "$DEST/model/model.safetensors.xz" ] && [ "$DEST/model/model.safetensors.xz" -nt "$FP16/model.safetensors" ]; then
  echo "== model.safetensors.xz is up to date"
  mv "$DEST/model/model.safetensors.xz" "$DEST/model.tmp/"
else
  echo "== compressing model.safetensors (xz -9, about 30 s)"
  xz -9 -T2 -c "$FP16/model.safetensors" > "$DEST/model.tmp/model.safetensors.xz"
fi
xz -9 -T2 "$DEST/model.tmp/tokenizer.json"   # 0.7 MB of JSON: about a fifth of it xz-compressed
rm -rf "$DEST/model" && mv "$DEST/model.tmp" "$DEST/model"

# 3. Data.
rm -f "$DEST/financial_qa_10k.tgz"  # the gzip pack of earlier versions
XZ_OPT=-9e tar cJf "$DEST/financial_qa_10k.tar.xz" --mode=u+w -C "$(dirname "$DATA")" \
  "$(basename "$DATA")/corpus.jsonl" "$(basename "$DATA")/queries.jsonl" "$(basename "$DATA")/qrels" \
  "$(basename "$DATA")/SOURCE.md"

# 4. Size: .gpu/speed plus the working tree that travels (tracked files and untracked files git does not ignore).
pack=$(find "$DEST" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
tree=$( { git ls-files -z; git ls-files -z -o --exclude-standard; } | xargs -0 -r stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
total=$((pack + tree))
du -ab "$DEST" | sort -n | tail -25
printf '%s: %d bytes (%.1f MiB); working tree %d bytes; total %d bytes (%.2f MiB) of %d (64 MiB)\n' \
  "$DEST" "$pack" "$(echo "$pack / 1048576" | bc -l)" "$tree" "$total" "$(echo "$total / 1048576" | bc -l)" "$LIMIT"
if [ "$total" -gt "$LIMIT" ]; then
  echo "too big: $total bytes > $LIMIT" >&2
  exit 1
fi
