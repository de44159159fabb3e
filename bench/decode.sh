#!/usr/bin/env bash
# Prefill and decode speed of loom's fast engine against llama.cpp, back to back on the same
# machine: build/decode (recipes/bench/llama-512.yaml, random weights; fp32, int8 per row and
# Q4_0) and bench/decode_llamacpp.py (llama.cpp through llama-cpp-python on gguf-py-written
# random models of the same shape; F32, Q8_0, Q4_0). llama-bench's method for both: pp = one
# forward of 512 tokens, tg = 128 single-token steps from an empty cache, 1 warm-up + 5 runs.
#   bench/decode.sh [THREADS] [ROUNDS]
# The machine's speed drifts by tens of percent within minutes (shared memory bandwidth), so the
# two engines run interleaved: each round measures every format pair back to back (loom, then
# llama.cpp), and the ratios are taken within a round; the summary gives each ratio's median over
# the rounds (default 3) and each engine's best round.
# The first run builds llama-cpp-python (`scripts/venv.sh --llama`: about 25 minutes here).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${2:-3}
[ -x build/decode ] || scripts/setup.sh
.venv/bin/python -c "import llama_cpp" 2>/dev/null || scripts/venv.sh --llama
unset OPENBLAS_CORETYPE  # OpenBLAS's own kernels for this CPU (see shared/LIBTORCH.md)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in $(seq "$rounds"); do
  for pair in f32:F32 int8:Q8_0 q4_0:Q4_0; do
    echo "round $round" | tee -a "$log"
    build/decode recipes/bench/llama-512.yaml "$threads" 512 128 5 "${pair%%:*}" | tee -a "$log"
    .venv/bin/python bench/decode_llamacpp.py --threads "$threads" --formats "${pair##*:}" | tee -a "$log"
  done
done
python3 - "$log" <<'PY'
import statistics, sys
rounds, current = [], None
for line in open(sys.argv[1]):
    f = line.split()
    if f[:1] == ["round"]:
        if not rounds or rounds[-1][0] != f[1]:
            rounds.append((f[1], {}))
    elif len(f) >= 7 and f[0] in ("f32", "int8", "q4_0", "F32", "Q8_0", "Q4_0"):
        rounds[-1][1][f[0]] = (float(f[1]), float(f[4]))
print("\nloom / llama.cpp, ratio within each round (prefill, decode):")
for a, b in (("f32", "F32"), ("int8", "Q8_0"), ("q4_0", "Q4_0")):
    pp, tg, best = [], [], {a: [0, 0], b: [0, 0]}
    for _, r in rounds:
        if a in r and b in r:
            pp.append(r[a][0] / r[b][0])
            tg.append(r[a][1] / r[b][1])
            for k in (a, b):
                best[k] = [max(best[k][0], r[k][0]), max(best[k][1], r[k][1])]
    if pp:
        print(f"  {a:5} vs {b:5} prefill {' '.join(f'{x:.2f}x' for x in pp)} (median {statistics.median(pp):.2f}x)"
              f"  decode {' '.join(f'{x:.2f}x' for x in tg)} (median {statistics.median(tg):.2f}x)")
        print(f"        best round: loom {best[a][0]:.0f} / {best[a][1]:.0f} tok/s, "
              f"llama.cpp {best[b][0]:.0f} / {best[b][1]:.0f} tok/s (prefill / decode)")
PY
