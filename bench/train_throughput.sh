#!/usr/bin/env bash
# Training throughput, loom vs PyTorch, measured in the same run on the same recipe:
#   bench/train_throughput.sh [RECIPE] [THREADS] [STEPS] [REPEATS]
# Each repeat runs loom then PyTorch back to back (timings drift on shared machines); prints
# every measurement and the median ratio per precision. Needs a built tree (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-recipes/bench/gpt-384.yaml}
threads=${2:-2}
steps=${3:-8}
repeats=${4:-3}
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-torch >/dev/null
fi
[ -x build/train_throughput ] || scripts/setup.sh
echo "# recipe $recipe, $threads threads, $steps steps after 3 warm-up, $repeats repeats"
# The peer at its best: the OpenBLAS core loom runs on. With OPENBLAS_CORETYPE unset, loom raises
# OpenBLAS's core when its detection falls short of the CPU (a masked virtual CPU gets Prescott's
# SSE3 kernels, docs/performance.md); PyTorch on the same OpenBLAS would not, so it gets loom's.
peer_core=${OPENBLAS_CORETYPE:-$(OPENBLAS_VERBOSE=2 build/train_throughput "$recipe" 1 fp32 0 1 2>&1 | sed -n 's/^Core: //p' | tail -1)}
echo "# environment: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} (loom's OpenBLAS core ${peer_core:-unknown}, the peer's too)" \
  "OMP_WAIT_POLICY=PASSIVE (both)"
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for precision in bf16 fp32; do
  ratios=()
  for ((i = 0; i < repeats; i++)); do
    loom=$(build/train_throughput "$recipe" "$threads" "$precision" 3 "$steps")
    peer=$(env ${peer_core:+OPENBLAS_CORETYPE=$peer_core} OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/train_throughput_peer.py "$recipe" "$threads" "$precision" 3 "$steps")
    echo "$loom"
    echo "$peer"
    ratios+=("$(/usr/bin/python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(round(a['tokens_per_s']/b['tokens_per_s'],3))" "$loom" "$peer")")
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "$precision: loom/PyTorch tokens/s ratios ${ratios[*]}; median $median"
done
