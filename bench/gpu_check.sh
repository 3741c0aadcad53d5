#!/usr/bin/env bash
# The GPU check (never measured on a GPU yet with its pack and study rows; bounded at 9.5 min).
# Run from anywhere on a machine with a GPU and PyTorch; installs nothing:
#     bash bench/gpu_check.sh            # full table
#     bash bench/gpu_check.sh --quick    # dry run of the same code, also on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout 570 "$python" -m bench.gpu_check "$@"
