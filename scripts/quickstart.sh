#!/usr/bin/env bash
# The main job on the embedded default, offline on a CPU: data -> stage 1 -> stage 2 -> eval -> figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/minillava quickstart "$@"
