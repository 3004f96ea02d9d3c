#!/usr/bin/env bash
# The whole test suite: unit tests, then every notebook executed and compared by nbval (strict).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# The same CPU kernels on every machine (README, "Testing"): torch, MKL and oneDNN each pick AVX-512 or AVX2 code by
# CPU, and the two round differently, so training's last digits would depend on the machine. Override to compare.
export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2} MKL_CBWR=${MKL_CBWR:-AVX2} ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2}
export TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the quickstart model that notebooks 04+ look at is trained once and reused from here
export MINILLAVA_NOTEBOOK_CACHE=${MINILLAVA_NOTEBOOK_CACHE:-$PWD/.cache/notebooks}
exec .venv/bin/python -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg \
  --nbval-current-env -p no:cacheprovider --durations=25 "$@"
