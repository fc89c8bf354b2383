#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): 50 TRL SFT steps on a 0.5B-shaped model in bf16 with its
# peak memory against the estimate, then compress, apply and a routed lm-eval run, as one table.
# At most 5 minutes on one GPU; on a machine without CUDA it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"  # one GPU, whatever the host has
exec timeout "${GPU_CHECK_TIMEOUT_S:-300}" "$PY" -m bench.gpu_check "$@"
