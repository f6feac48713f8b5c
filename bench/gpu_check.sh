#!/usr/bin/env bash
# GPU check of the full-size blip2-opt-2.7b (random weights): 4-bit load memory, QLoRA step time and
# memory at per-device batch 4 and 8, evaluation samples/s at batch 1 vs 32 (4-bit and bf16).
# All the work is bench/gpu_check.py; this wrapper checks for a GPU, prints it, and runs
# `python -m bench.gpu_check` with a hard time limit.
#
#   bash bench/gpu_check.sh [--name=value ...]     # settings of bench/gpu_check.py, e.g. --train_batches=[4,8]
#
# On a machine with an NVIDIA GPU (16 GB or more; about 7 minutes), from any folder:
#   pip install -r requirements.txt              # with the CUDA build of torch, and bitsandbytes
#   python -m bench.gpu_check --smoke=True       # optional first check, on any machine: CPU, about a minute
#   bash bench/gpu_check.sh
#
# Outputs: stdout (JSON + markdown), outputs/bench_gpu_check/gpu_check.json and the gpu_check section
# of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA GPU here; python -m bench.gpu_check --smoke=True runs the check on a CPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# a hard stop in case a CUDA call hangs: 8 minutes
exec timeout 480 python3 -m bench.gpu_check "$@"
