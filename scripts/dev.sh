#!/usr/bin/env bash
# One entry point for a fresh machine: set up the virtualenv, then run the demo or the tests.
#   bash scripts/dev.sh demo    # set up, then `diffquant bench` on the built-in model (zoo:shapes)
#   bash scripts/dev.sh test    # set up, then the default test suite
#   bash scripts/dev.sh setup   # set up only
# The pins in constraints/cpu-ci.txt are the versions this project is tested with on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DIFFQUANT_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip install -q --upgrade pip
  # torch first, pinned, so the extras below cannot move it. Where it comes from is pip's choice: a
  # wheel in PIP_FIND_LINKS (this project's CI machines hold a CPU build there) or PyPI, whose Linux
  # wheel is the multi-GB CUDA build. DIFFQUANT_TORCH_INDEX picks an index instead, e.g.
  # https://download.pytorch.org/whl/cpu for a CPU-only build.
  if [ -n "${DIFFQUANT_TORCH_INDEX:-}" ]; then
    python -m pip install -q "torch==2.13.0" --index-url "$DIFFQUANT_TORCH_INDEX"
  else
    python -m pip install -q "torch==2.13.0"
  fi
  python -m pip install -q -e '.[all,dev]' -c constraints/cpu-ci.txt
}

browser() {
  # The report's browser test needs Debian's chromium; install it when we may (root + apt).
  if command -v chromium >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "note: could not install chromium; the browser test will be skipped"
  else
    echo "note: chromium not found (apt-get install chromium); the browser test will be skipped"
  fi
}

case "${1:-}" in
  setup) setup ;;
  demo)
    setup
    shift
    diffquant bench "$@"
    ;;
  test)
    setup
    browser
    shift
    python -m pytest -q --durations=15 "$@"
    ;;
  *)
    echo "usage: bash scripts/dev.sh {demo|test|setup} [extra args]" >&2
    exit 2
    ;;
esac
