#!/usr/bin/env bash
# Prefill and decode speed of loom's fast engine against llama.cpp, back to back on the same
# machine: build/decode (recipes/bench/llama-512.yaml, random weights; fp32, int8 per row and
# Q4_0) and bench/decode_llamacpp.py (llama.cpp through llama-cpp-python on gguf-py-written
# random models of the same shape; F32, Q8_0, Q4_0). llama-bench's method for both: pp = one
# forward of 512 tokens, tg = 128 single-token steps from an empty cache, 1 warm-up + 5 runs.
#   bench/decode.sh [THREADS]
# The first run builds llama-cpp-python (`scripts/venv.sh --llama`: about 25 minutes here).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
[ -x build/decode ] || scripts/setup.sh
.venv/bin/python -c "import llama_cpp" 2>/dev/null || scripts/venv.sh --llama
unset OPENBLAS_CORETYPE  # OpenBLAS's own kernels for this CPU (see shared/LIBTORCH.md)
loom=$(build/decode recipes/bench/llama-512.yaml "$threads" 512 128 5 | tee /dev/stderr)
peer=$(.venv/bin/python bench/decode_llamacpp.py --threads "$threads" | tee /dev/stderr)
# Ratios loom / llama.cpp per format pair (fp32/F32, int8/Q8_0, q4_0/Q4_0).
python3 - "$loom" "$peer" <<'PY'
import sys
def rows(text):
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7 and f[0] in ("f32", "int8", "q4_0", "F32", "Q8_0", "Q4_0"):
            out[f[0]] = (float(f[1]), float(f[4]))
    return out
loom, peer = rows(sys.argv[1]), rows(sys.argv[2])
print("loom / llama.cpp:")
for a, b in (("f32", "F32"), ("int8", "Q8_0"), ("q4_0", "Q4_0")):
    if a in loom and b in peer:
        print(f"  {a:5} vs {b:5} prefill {loom[a][0] / peer[b][0]:.2f}x  decode {loom[a][1] / peer[b][1]:.2f}x")
PY
