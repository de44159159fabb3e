#!/usr/bin/env bash
# Every tracked C++ file is as .clang-format says (Debian 12's clang-format 14; other versions
# format some constructs differently, so only that one is asked).
#   tests/check_format.sh SOURCE_DIR
set -euo pipefail
cd "$1"
mapfile -t files < <(git ls-files '*.h' '*.cpp' ':!tests/data')
if ! clang-format-14 --dry-run --Werror "${files[@]}" 2>"${TMPDIR:-/tmp}/loom-format.$$"; then
  grep -m 20 "error:" "${TMPDIR:-/tmp}/loom-format.$$" >&2
  rm -f "${TMPDIR:-/tmp}/loom-format.$$"
  echo "format: run clang-format-14 -i on the files above" >&2
  exit 1
fi
rm -f "${TMPDIR:-/tmp}/loom-format.$$"
echo "format: ${#files[@]} files as .clang-format says"
