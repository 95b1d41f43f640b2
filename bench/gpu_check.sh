#!/usr/bin/env bash
# The device check: everything a GPU machine can tell us that the CPU cannot, in one run.
#
#   bash bench/gpu_check.sh            # on a GPU machine (~8 min on one GPU): tests + benchmarks
#   bash bench/gpu_check.sh --dry-run  # anywhere: print every step and validate it, run nothing
#
# Steps: the `gpu`-marked tests (DDP with --gpu, killed GPU worker resume, Ray Data on a GPU
# actor, Serve device auto, faiss GPU shards, the device spy on cuda), then training throughput
# (bare vs Ray Train, 1 vs all GPUs, cached and end to end), embedding throughput, serving with
# `device: auto` (replicas on the GPU vs the CPU), and faiss-gpu vs faiss-cpu at 1M vectors. Each
# benchmark writes bench/results/*-gpu.json with the GPU's name; `bench/report.py
# --write-readme` then renders them into README Results. Install first: `pip install -e
# ".[dev,gpu]"` (faiss-gpu, not faiss-cpu: tests/test_gpu_faiss.py checks the import).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

PY=${PYTHON:-.venv/bin/python}
RESULTS=bench/results
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [[ "$GPUS" -lt 1 ]]; then
  if [[ $DRY_RUN -eq 0 ]]; then
    echo "gpu_check: no GPU (nvidia-smi lists none); run with --dry-run to check the steps" >&2
    exit 1
  fi
  GPUS=2  # dry run on a machine without GPUs: validate the steps as a 2-GPU host runs them
fi
WORKERS=$([[ "$GPUS" -gt 1 ]] && echo "1,$GPUS" || echo "1")

GPU_TESTS="tests/test_gpu_platform.py tests/test_gpu_faiss.py tests/test_device.py"
# name | seconds allowed | command (benchmarks: script + args, checked by their parse_args)
STEPS=(
  "gpu tests|150|-m pytest -m gpu -q -rs -p no:cacheprovider $GPU_TESTS"
  "training throughput|90|bench/train_throughput.py --device cuda --outfits 400 --workers $WORKERS --epochs 3 --e2e-epochs 2 --e2e-max-steps 4 --out $RESULTS/train_throughput-gpu.json"
  "embedding throughput|45|bench/embed_throughput.py --device cuda --outfits 1000 --actors auto --repeats 2 --out $RESULTS/embed_throughput-gpu.json"
  "serving, device auto|90|bench/serve_gpu.py --devices cpu,cuda --replicas 2 --window 5 --warmup 2 --out $RESULTS/serve_load-gpu.json"
  "faiss-gpu at 1M|45|bench/index.py --device cuda --sizes 1000000 --configs hybrid-vit-b32 --hnsw-max 0 --single 100 --platform-queries 100 --out $RESULTS/index-gpu.json"
  "faiss-cpu at 1M, same host|60|bench/index.py --device cpu --sizes 1000000 --configs hybrid-vit-b32 --hnsw-max 0 --single 100 --platform-queries 100 --out $RESULTS/index_cpu-gpu.json"
)

validate() {  # name, command: fail unless the step would start as written
  local name=$1 cmd=$2 script
  read -r -a argv <<<"$cmd"
  if [[ "${argv[0]}" == "-m" ]]; then  # pytest: the gpu tests must be collected
    local n
    n=$("$PY" "${argv[@]}" --collect-only 2>/dev/null | grep -c '::' || true)
    [[ "$n" -ge 5 ]] || { echo "  INVALID: $name collects $n gpu tests" >&2; return 1; }
    echo "  ok: collects $n gpu-marked tests"
    return 0
  fi
  script=${argv[0]}
  [[ -f "$script" ]] || { echo "  INVALID: $script does not exist" >&2; return 1; }
  # The script's own argument parser on these arguments (no torch/ray start, nothing written).
  BENCH_ARGS="${cmd#"$script"}" "$PY" - "$script" <<'EOF' || { echo "  INVALID: $name" >&2; return 1; }
import importlib, os, shlex, sys
from pathlib import Path
script = Path(sys.argv[1])
sys.path.insert(0, str(script.parent))
module = importlib.import_module(script.stem)
args = module.parse_args(shlex.split(os.environ["BENCH_ARGS"]))
out = Path(args.out)
assert out.name.endswith("-gpu.json"), f"{out}: GPU results are named *-gpu.json"
assert os.access(out.parent, os.W_OK), f"{out.parent} is not writable"
import report
assert out.name in report.GPU_FILES, f"bench/report.py does not render {out.name}"
print(f"  ok: arguments parse; writes {out} (rendered by report.py)")
EOF
}

started=$(date +%s)
failed=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name budget cmd <<<"$step"
  echo "== $name (budget ${budget}s): $PY $cmd"
  if [[ $DRY_RUN -eq 1 ]]; then
    validate "$name" "$cmd" || failed=1
    continue
  fi
  t0=$(date +%s)
  read -r -a argv <<<"$cmd"
  if ! timeout "$((budget * 2))" nice "$PY" "${argv[@]}"; then
    echo "!! $name failed" >&2
    failed=1
  fi
  echo "   $name: $(( $(date +%s) - t0 )) s"
done

if [[ $DRY_RUN -eq 1 ]]; then
  total=0
  for step in "${STEPS[@]}"; do IFS='|' read -r _ budget _ <<<"$step"; total=$((total + budget)); done
  echo "== dry run: ${#STEPS[@]} steps, budgets add up to ${total}s"
  [[ $total -le 480 ]] || { echo "  INVALID: more than 8 minutes of budget" >&2; failed=1; }
  "$PY" -c "import torch, faiss; print('   here: torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| faiss', faiss.__version__, 'GPU build', hasattr(faiss, 'StandardGpuResources'))"
  [[ $failed -eq 0 ]] && echo "dry run ok" || echo "dry run FAILED" >&2
  exit $failed
fi
echo "== done in $(( $(date +%s) - started )) s; render: $PY bench/report.py --write-readme"
"$PY" bench/report.py >/dev/null
exit $failed
