#!/usr/bin/env bash
# Install, build, and run the whole test suite (GoogleTest through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/venv.sh  # .venv with the PyPI reference peers some tests run (sacrebleu)
cd build
ctest --output-on-failure --timeout 600 -j2
