#!/usr/bin/env bash
# The README's "Using it on your data" sequence on a fresh synthetic catalog: pre-train the tiny
# CLIP towers on the catalog, then train hybrid-tiny and image-only on those towers (and, for the
# record, both on random towers, which `outfitter train` refuses without the flag).
# Usage: bench/on_your_data.sh [WORKDIR] [OUTFITS]   -> WORKDIR/*.json, test AUCs printed.
set -euo pipefail
work=${1:-/tmp/outfitter-on-your-data}
outfits=${2:-2000}  # `outfitter data synth`'s default size
bin=$(dirname "$0")/../.venv/bin
mkdir -p "$work"
"$bin/outfitter" data synth --out "$work/data" --outfits "$outfits"
"$bin/outfitter" clip-pretrain --data "$work/data" --out "$work/towers.safetensors"
train() {  # NAME CONFIG ARGS...
  local name=$1 config=$2; shift 2
  "$bin/outfitter" train --model-config "$config" --data "$work/data" --workdir "$work/runs" \
    --run-name "$name" --metrics-out "$work/$name.json" "$@" > "$work/$name.log" 2>&1
}
train hybrid hybrid-tiny --set clip.pretrained="$work/towers.safetensors"
train image-only image-only --set clip.pretrained="$work/towers.safetensors"
train hybrid-random-towers hybrid-tiny --allow-random-towers
train image-only-random-towers image-only --allow-random-towers
for name in hybrid image-only hybrid-random-towers image-only-random-towers; do
  "$bin/python" -c "import json,sys; m=json.load(open(sys.argv[1])); \
print(sys.argv[2], 'valid AUC %.3f test AUC %.3f test FITB %.3f' % (m['valid']['compatibility_auc'], \
m['test']['compatibility_auc'], m['test']['fitb_accuracy']))" "$work/$name.json" "$name"
done
