#!/usr/bin/env bash
# Create .venv and install what the calling command needs:
#   bash scripts/setup.sh          the core: torch, minillava, the notebook tools (what quickstart.sh needs)
#   bash scripts/setup.sh --test   the core plus the test tools, and for tests/test_demo.py only, Debian's
#                                  chromium + chromium-driver (apt, as root) and gradio (in .venv/demo)
# Safe to run again: each level keeps a stamp and does nothing when the installed set matches pyproject.toml
# and this script. A CPU build of torch is installed where no NVIDIA GPU is present (an unpinned `torch` from
# PyPI is a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
level=core
case "${1:-}" in
  "") ;;
  --test) level=test ;;
  *) echo "usage: bash scripts/setup.sh [--test]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
want=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)
stamp() { echo ".venv/.minillava-$1"; }
done_already() { [ -f "$(stamp "$1")" ] && [ "$(cat "$(stamp "$1")")" = "$want" ]; }
if done_already "$level"; then exit 0; fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! done_already core; then
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      "$VPY" -m pip install -q "torch>=2.2"                     # CUDA build from PyPI
    elif "$VPY" -m pip install -q --no-deps --no-index "torch==2.13.0" 2>/dev/null; then
      "$VPY" -m pip install -q "torch==2.13.0"                  # a local CPU wheel (find-links); now fetch its deps
    else
      "$VPY" -m pip install -q "torch>=2.2" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple               # CPU build from the PyTorch index
    fi
  fi
  "$VPY" -m pip install -q -e ".[notebooks]"
  echo "$want" > "$(stamp core)"
fi
[ "$level" = test ] || exit 0

"$VPY" -m pip install -q -e ".[test]"
# Only for tests/test_demo.py, and never fatal: without these that test skips and says why (measured: ~35 s for
# Debian's chromium + chromium-driver, ~25 s for gradio). gradio pins an older Pillow than the core uses, so it goes
# into an overlay environment, .venv/demo, that sees .venv's packages behind its own gradio and Pillow.
if [ "${MINILLAVA_SKIP_DEMO_DEPS:-0}" != 1 ]; then
  (
    set +e
    if ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null
    fi
    [ -x .venv/demo/bin/python ] || "$VPY" -m venv .venv/demo || exit 1
    base=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    overlay=$(.venv/demo/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "import site; site.addsitedir('$base')" > "$overlay/zz_minillava_base.pth"
    timeout 600 .venv/demo/bin/python -m pip install -q "gradio>=5"
  ) || echo "setup: the web demo's test dependencies did not install; tests/test_demo.py will skip"
fi
echo "$want" > "$(stamp test)"
