#!/usr/bin/env bash
# The whole test suite: unit tests, then every notebook executed and compared by nbval (strict).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the quickstart model that notebooks 04+ look at is trained once and reused from here
export MINILLAVA_NOTEBOOK_CACHE=${MINILLAVA_NOTEBOOK_CACHE:-$PWD/.cache/notebooks}
exec .venv/bin/python -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg \
  --nbval-current-env -p no:cacheprovider "$@"
