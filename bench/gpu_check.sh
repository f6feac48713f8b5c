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
# Outputs: stdout (JSON + markdown), outputs/bench_gpu_check/gpu_check.json, the gpu_check section of
# bench/RESULTS.md and, when OUT is set, $OUT/gpu_results.md and $OUT/gpu_check.json.
#
# What the GPU machine (device tool, nvidia-h100-x1) lacks: bitsandbytes. It has Python 3.12,
# torch 2.11, transformers 5.17, peft, accelerate, torchvision; the script runs with transformers 5.17
# (checked on CPU with 5.17 + huggingface_hub 1.33), so only bitsandbytes travels.
#
# 1. Once, here, in the repository root (43 MB wheel, py3-none-manylinux_2_24_x86_64: the usual
#    manylinux_2_28/2_17 tags find only bitsandbytes <= 0.42, so name 2_24):
#      echo /.whl/ >> .git/info/exclude
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d .whl bitsandbytes==0.50.2
#    (its needs, torch, numpy and packaging, are on the GPU machine already)
# 2. The device tool's run, with carry [".whl"] and timeout_s 540:
#      set -o pipefail; bash bench/gpu_check.sh --wheels=.whl 2>&1 | tee $OUT/gpu_check.log
#    It ends within about 7 minutes (TOTAL_BUDGET_S=420 skips sections not started by then; each timed
#    loop stops after SECTION_BUDGET_S). The files come back under the reply's files_at:
#    gpu_results.md (the section to paste between <!-- gpu_check:start --> and <!-- gpu_check:end -->
#    in bench/RESULTS.md), gpu_check.json and gpu_check.log.
# 3. Here, before using the GPU, prove the script: bash bench/gpu_check.sh --smoke (about 15 s on 2 cores)
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
