#!/usr/bin/env bash
# GPU check of a full-size BLIP-2 checkpoint (random weights): 4-bit load memory, QLoRA step time and
# memory at per-device batch 4 and 8, evaluation samples/s at batch 1 vs 32 (4-bit and bf16).
# The checkpoint is --model_id (default Salesforce/blip2-opt-2.7b); its architecture comes from the config
# shipped in src/, so nothing is downloaded. All the work is bench/gpu_check.py; this wrapper checks for a
# GPU, prints it, and runs `python -m bench.gpu_check` with a hard time limit.
#
#   bash bench/gpu_check.sh [--name=value ...]     # settings of bench/gpu_check.py, e.g. --train_batches=[4,8]
#
# On a machine with an NVIDIA GPU, from any folder:
#   pip install -r requirements.txt              # with the CUDA build of torch, and bitsandbytes
#   python -m bench.gpu_check --smoke=True       # optional first check, on any machine: CPU, about a minute
#   bash bench/gpu_check.sh                                          # blip2-opt-2.7b (16 GB or more; about 7 minutes)
#   bash bench/gpu_check.sh --model_id=Salesforce/blip2-flan-t5-xl   # Flan-T5-XL (the Flan-T5 smoke first:
#                                                                    #   python -m bench.gpu_check --smoke=True --model_id=Salesforce/blip2-flan-t5-xl)
#   bash bench/gpu_check.sh --model_id=Salesforce/blip2-flan-t5-xxl  # Flan-T5-XXL, and --model_id=Salesforce/blip2-opt-6.7b:
#                                                                    #   more GPU memory and time (python -m bench.memory_plan)
#   GPU_CHECK_TIMEOUT_S=1200 bash bench/gpu_check.sh --model_id=Salesforce/blip2-flan-t5-xxl --total_budget_s=900
#                                                                    # a larger checkpoint with more time
#
# Outputs: stdout (JSON + markdown), outputs/bench_gpu_check/gpu_check.json (--output_dir=... keeps one per
# checkpoint) and the checkpoint's section of bench/RESULTS.md: gpu_check for blip2-opt-2.7b,
# gpu_check_flan_t5_xl for blip2-flan-t5-xl, gpu_check_flan_t5_xxl, gpu_check_opt_6_7b.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA GPU here; python -m bench.gpu_check --smoke=True runs the check on a CPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# a hard stop in case a CUDA call hangs: 8 minutes unless GPU_CHECK_TIMEOUT_S says otherwise
exec timeout "${GPU_CHECK_TIMEOUT_S:-480}" python3 -m bench.gpu_check "$@"
