#!/usr/bin/env bash
# Load test of `loom serve`: many concurrent clients posting completions for a fixed time (hey),
# while the server's resident memory is sampled every second.
#   bench/serve_load.sh [CHECKPOINT] 
# Environment: DURATION (2m), CLIENTS (64), SLOTS (8), MAX_TOKENS (32), THREADS (2, libtorch),
# PORT (18080), PROMPT. CHECKPOINT defaults to runs/default (`build/loom train` writes it); when
# it does not exist, the default recipe is trained for 300 steps into it first.
# Prints hey's summary (throughput, latency percentiles, status codes and errors), the server's
# peak RSS and its /metrics counters; exits non-zero if any request failed.
set -euo pipefail
cd "$(dirname "$0")/.."
checkpoint=${1:-runs/default}
duration=${DURATION:-2m}
clients=${CLIENTS:-64}
slots=${SLOTS:-8}
max_tokens=${MAX_TOKENS:-32}
threads=${THREADS:-2}
port=${PORT:-18080}
prompt=${PROMPT:-It is a truth universally acknowledged}
[ -x build/loom ] && command -v hey >/dev/null || scripts/setup.sh
if [ ! -e "$checkpoint" ]; then
  echo "# no checkpoint at $checkpoint: training the default recipe for 300 steps"
  build/loom train --steps 300 --out "$checkpoint"
fi

work=$(mktemp -d)
server_pid=""
sampler_pid=""
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

printf '{"prompt": "%s", "max_tokens": %d, "temperature": 0.8, "top_p": 0.95}\n' "$prompt" "$max_tokens" > "$work/body.json"
# Every client may wait for a slot: the queue holds them all, and each open connection holds an
# HTTP thread.
build/loom --threads "$threads" serve "$checkpoint" --port "$port" --slots "$slots" --queue "$clients" \
  --threads-http $((clients + 16)) 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done
# Resident memory (kB) once a second, for as long as the server lives.
(while [ -r "/proc/$server_pid/status" ]; do
   awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || true
   sleep 1
 done) > "$work/rss.txt" &
sampler_pid=$!
rss_idle=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")

echo "# checkpoint $checkpoint; $clients clients for $duration; $slots slots, libtorch threads $threads;" \
     "max_tokens $max_tokens, temperature 0.8, top_p 0.95"
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
hey -z "$duration" -c "$clients" -m POST -T application/json -D "$work/body.json" \
  "http://127.0.0.1:$port/v1/completions" > "$work/hey.txt"
sed -n '/^Summary:/,/^Details/p' "$work/hey.txt" | grep -v '^Details'
sed -n '/^Status code distribution:/,$p' "$work/hey.txt"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^loom_(http_requests_total|generated_tokens_total|prompt_tokens_total|decode_steps_total|tokens_per_second|cancelled_total)'

kill -TERM "$server_pid"
wait "$server_pid" || true
server_pid=""
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=""
rss_peak=$(sort -n "$work/rss.txt" | tail -1)
echo "server RSS: idle $((rss_idle / 1024)) MiB, peak $((rss_peak / 1024)) MiB ($(wc -l < "$work/rss.txt") samples)"
ok=$(awk '/\[200\]/ {print $2}' "$work/hey.txt")
total=$(awk '/\[[0-9]+\]/ {n += $2} END {print n + 0}' "$work/hey.txt")
errors=$(awk '/^Error distribution:/ {e = 1; next} e && /\[[0-9]+\]/ {n += substr($1, 2, length($1) - 2)} END {print n + 0}' "$work/hey.txt")
echo "requests: $total answered, ${ok:-0} with 200, $errors transport errors"
[ "${ok:-0}" -eq "$total" ] && [ "$errors" -eq 0 ] && [ "$total" -gt 0 ]
