#!/usr/bin/env bash
# The GPU check: one table of correctness and speed on this machine's GPU, sized for at most
# 5 minutes on an H100; it stops itself at 350 s (about 6 minutes) and still prints its table.
# Run from anywhere, with torch and torchvision installed; installs nothing:
#     bash bench/gpu_check.sh            # the full table
#     bash bench/gpu_check.sh --quick    # the same code at tiny sizes, also on a CPU
#     OUT=folder bash bench/gpu_check.sh # also folder/gpu_check.txt and gpu_check.json
set -euo pipefail
if [ -n "${OUT:-}" ]; then export OUT="$(realpath -m "$OUT")"; fi  # before the cd below
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# A last resort only: the check ends itself at 350 s (85 s with --quick), table printed.
exec timeout --kill-after=10 390 "$python" -m bench.gpu_check "$@"
