#!/usr/bin/env bash
# Data-parallel scaling on this machine, timing `loom train` itself (its metrics.jsonl):
#   bench/scaling.sh [RECIPE] [STEPS] [REPEATS]
# Per repeat, interleaved: one process with 2 threads, one process with 1 thread, `--nproc 2`
# data parallel (two processes, 1 thread each, Gloo over loopback) and `--nproc 2` with
# train.tensor_parallel 2 (each process holds half of every layer). Prints tokens/s (mean of the
# log windows after the first) and, for two processes, the share of rank 0's step spent in
# collectives.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-recipes/bench/gpt-384.yaml}
steps=${2:-12}
repeats=${3:-2}
unset OPENBLAS_CORETYPE  # full-speed kernels (../shared/LIBTORCH.md)
[ -x build/loom ] || scripts/setup.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "# recipe $recipe, $steps steps, $repeats repeats; cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"

summary() {  # metrics.jsonl -> "tokens/s comm_share"
  python3 - "$1" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l][1:]  # the first window warms up
rate = sum(r["tokens_per_s"] for r in rows) / len(rows)
comm = [r["comm_share"] for r in rows if "comm_share" in r]
print(f"{rate:.0f} {sum(comm) / len(comm) if comm else float('nan'):.3f}")
EOF
}

declare -A rates
for ((i = 0; i < repeats; i++)); do
  for config in 1x2 1x1 2x1 tp2x1; do
    procs=${config%x*}
    tp=1
    [[ $procs == tp* ]] && procs=${procs#tp} && tp=$procs
    threads=${config#*x}
    out="$tmp/$config-$i"
    args=(--threads "$threads" train "$recipe" --steps "$steps" --out "$out"
      --set train.log_every=2 --set train.eval_every=0 --set train.save_every=0 --set train.eval_batches=1)
    ((procs > 1)) && args+=(--nproc "$procs")
    ((tp > 1)) && args+=(--set "train.tensor_parallel=$tp")
    build/loom "${args[@]}" > "$out.log" 2>&1 || { cat "$out.log"; exit 1; }
    read -r rate comm < <(summary "$out/metrics.jsonl")
    rates[$config]+="$rate "
    echo "repeat $i: $procs process(es) x $threads thread(s)$( ((tp > 1)) && echo ", tensor parallel $tp"): $rate tokens/s$([ "$procs" -gt 1 ] && echo ", communication $(python3 -c "print(f'{100*$comm:.1f}%')") of rank 0's step")"
  done
done
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
one=$(median "${rates[1x2]}")
for config in 1x2 1x1 2x1 tp2x1; do
  m=$(median "${rates[$config]}")
  echo "median $config: $m tokens/s ($(python3 -c "print(f'{$m/$one:.2f}')")x one process with 2 threads)"
done
