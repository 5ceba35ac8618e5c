#!/usr/bin/env bash
# One prepared GPU run of the speed benchmark (issue 6: "the same benchmark runs there with bf16").
#
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR] [extra benchmarks.speed flags, e.g. --quick]
#
# Writes speed_bf16.json / .md (every section, bf16 autocast), speed_fp32.json / .md (efficiency and
# options in fp32, for the same-card comparison) and gpu.txt (the card) to OUTPUT_DIR (default
# $OUT if set, else benchmarks/results/gpu). Synthetic batches only: no data set is read.
#
# On a machine without `datasets` (e.g. the `device` tool's image), put wheels in .whl/ first, here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# and this script installs them into /tmp/site before running.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results/gpu}}"
shift || true
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi";
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"; } | tee "$out/gpu.txt"
python3 -m benchmarks.speed --precision bf16 --output "$out/speed_bf16.json" "$@" | tee "$out/speed_bf16.md"
python3 -m benchmarks.speed --precision fp32 --sections efficiency,options --compile none \
  --output "$out/speed_fp32.json" "$@" | tee "$out/speed_fp32.md"
