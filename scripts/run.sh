#!/usr/bin/env bash
# The main job: install, build, train the built-in default recipe (a small GPT on Jane Austen's
# novels) into runs/default, print held-out loss against the unigram entropy, and a sample.
# Extra arguments go to `loom train`, e.g. scripts/run.sh recipes/llama-tiny.yaml --out runs/llama
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ $# -eq 0 ] && [ -d runs/default ]; then
  echo "run: runs/default exists; training into runs/default-$(date +%Y%m%d-%H%M%S)"
  set -- --out "runs/default-$(date +%Y%m%d-%H%M%S)"
fi
exec build/loom train "$@"
