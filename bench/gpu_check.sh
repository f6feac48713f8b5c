#!/usr/bin/env bash
# GPU check of the full-size blip2-opt-2.7b (random weights): 4-bit load memory, QLoRA step time and
# memory at per-device batch 4 and 8, evaluation samples/s at batch 1 vs 32 (4-bit and bf16).
# All the work is bench/gpu_check.py; this wrapper only sets up Python packages and runs it.
#
#   bash bench/gpu_check.sh [--smoke] [--wheels=DIR] [--name=value ...]
#
#   --smoke        CPU run on a shrunken architecture (2 layers per tower, width 64), 4-bit through
#                  bitsandbytes' CPU backend; about a minute; proves the script end to end.
#   --wheels=DIR   pip install every DIR/*.whl with --no-index --no-deps into /tmp/site and put it first
#                  on PYTHONPATH (default: .whl when that folder exists). Nothing is fetched from the internet.
#   --name=value   passed on to bench/gpu_check.py (e.g. --train_batches=[4,8] --eval_questions=64).
#
# Outputs: stdout (JSON + markdown), outputs/bench_gpu_check/gpu_check.json and the gpu_check section
# of bench/RESULTS.md.
#
# On a machine with an NVIDIA GPU (16 GB or more; about 7 minutes):
#   pip install -r requirements.txt          # with the CUDA build of torch, and bitsandbytes
#   bash bench/gpu_check.sh --smoke          # first, on any machine: proves the script on the CPU in a minute
#   bash bench/gpu_check.sh                  # then on the GPU
# A machine that cannot reach PyPI can take bitsandbytes as a wheel downloaded elsewhere
# (pip download bitsandbytes --no-deps -d wheels/) and run `bash bench/gpu_check.sh --wheels=wheels`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

smoke=0
wheels=""
[ -d .whl ] && wheels=".whl"
args=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --wheels=*) wheels="${arg#--wheels=}" ;;
    *) args+=("$arg") ;;
  esac
done

if [ -n "$wheels" ]; then
  shopt -s nullglob
  files=("$wheels"/*.whl)
  shopt -u nullglob
  if [ ${#files[@]} -eq 0 ]; then
    echo "error: no .whl files in $wheels" >&2
    exit 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${files[@]}"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed into /tmp/site: ${files[*]}"
fi

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "$smoke" = 1 ]; then
  exec python3 bench/gpu_check.py --smoke=True "${args[@]+"${args[@]}"}"
fi
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA GPU here; use --smoke on a CPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# a hard stop in case a CUDA call hangs: 8 minutes
exec timeout 480 python3 bench/gpu_check.py "${args[@]+"${args[@]}"}"
