#!/usr/bin/env bash
# Soak test of `loom serve` (bench/soak.py): CLIENTS streaming chat clients plus ABUSERS threads of
# malformed and hostile requests for DURATION seconds against loopback; reports streams served,
# hostile requests answered and unexpected answers by kind, p50/p99 latency and the server's RSS
# after warm-up, at its peak and at the end. Fails on any 5xx, reset, dead server, or RSS growth
# past RSS_GROWTH_MB over the second half of the run.
#   bench/soak.sh [CHECKPOINT]   DURATION (600), CLIENTS (64), ABUSERS (4), SLOTS (8),
#                                MAX_TOKENS (48), THREADS (2, libtorch), PORT (18090), RSS_GROWTH_MB (32)
# CHECKPOINT defaults to the imported SmolLM2-135M-Instruct (data/smollm2/model; scripts/fetch_smollm2.sh
# fetches its GGUF, `loom import` makes it), else runs/default (trained for 300 steps when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/loom ] || scripts/setup.sh
checkpoint=${1:-}
if [ -z "$checkpoint" ]; then
  gguf=$(scripts/fetch_smollm2.sh 2>/dev/null | tail -1 || true)
  if [ -n "$gguf" ] && [ -f "$gguf" ]; then
    checkpoint=data/smollm2/model
    [ -d "$checkpoint" ] || build/loom import "$gguf" --out "$checkpoint"
  else
    checkpoint=runs/default
    [ -e "$checkpoint" ] || build/loom train --steps 300 --out "$checkpoint"
  fi
fi
port=${PORT:-18090}
clients=${CLIENTS:-64}
log=$(mktemp)
build/loom --threads "${THREADS:-2}" serve "$checkpoint" --port "$port" --slots "${SLOTS:-8}" --queue "$((clients + 64))" \
  2> "$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
context=$(grep -o 'context [0-9]*' "$log" | head -1 | grep -o '[0-9]*')
echo "# $checkpoint: $clients streaming clients + ${ABUSERS:-4} abusers for ${DURATION:-600} s; slots ${SLOTS:-8};" \
     "cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
status=0
python3 bench/soak.py --port "$port" --pid "$server" --duration "${DURATION:-600}" --clients "$clients" \
  --abusers "${ABUSERS:-4}" --max-tokens "${MAX_TOKENS:-48}" --context "${context:-2048}" \
  --rss-growth-mb "${RSS_GROWTH_MB:-32}" || status=$?
kill -0 "$server" 2>/dev/null || { echo "the server died:"; tail -20 "$log"; exit 1; }
grep -c ' error\]\| error:' "$log" | xargs echo "server log error lines:"
exit $status
