#!/usr/bin/env bash
# Crash safety, measured: tests/faults.py with its full counts. SIGKILLs `loom train` KILLS times
# at random instants (during checkpoint writes and the data/tokenizer build included), checking
# after each kill that every checkpoint loads and at most one save interval is lost, and that every
# run finally equals an uninterrupted one bit for bit; then kills `loom data`, `quantize`, `export`
# and `import` CONVERT_KILLS times (each output absent or complete); then a disk-full run (root).
#   bench/faults.sh            KILLS (50), CONVERT_KILLS (50), SEED (1)
# Prints progress and a JSON summary; exits non-zero on any failed check. CI runs a few kills of
# the same script (CTest Faults.KillsLoseAtMostOneSaveInterval).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/loom ] || scripts/setup.sh
exec python3 tests/faults.py --loom build/loom --kills "${KILLS:-50}" --convert-kills "${CONVERT_KILLS:-50}" \
  --seed "${SEED:-1}"
