#!/usr/bin/env bash
# The main job on the embedded default, offline on a CPU: data -> stage 1 -> stage 2 -> eval -> figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The same CPU kernels on every machine (README, "Testing"): torch, MKL and oneDNN each pick AVX-512 or AVX2 code by
# CPU, and the two round differently, so training's last digits would depend on the machine. Override to compare.
export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2} MKL_CBWR=${MKL_CBWR:-AVX2} ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/minillava quickstart "$@"
