#!/usr/bin/env bash
# The installed package, as a C++ user meets it: `cmake --install` into a scratch prefix, then
# examples/embed configured and built as a separate CMake project against it (find_package(loom)),
# run on the checkpoint kept under tests/data, and compared with what the installed `loom generate`
# prints. Nothing may come from the build tree: the SentencePiece module must be found relative to
# the installed libloom.so.
#   tests/install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unset LOOM_SENTENCEPIECE_SHIM
# The README shows the example as it is.
if ! diff <(awk '/^```cpp/{f=1; next} /^```/{f=0} f' "$src/README.md") \
          <(sed -n '/^#include <cstdio>/,$p' "$src/examples/embed/main.cpp") >"$tmp/readme.diff"; then
  echo "install: README.md's C++ example differs from examples/embed/main.cpp:" >&2; cat "$tmp/readme.diff" >&2; exit 1
fi
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in bin/loom lib/libloom.so lib/loom/libloom_sentencepiece.so lib/cmake/loom/loomConfig.cmake \
         include/loom/checkpoint/checkpoint.h include/loom/infer/generate.h; do
  [ -e "$tmp/prefix/$f" ] || { echo "install: $f is missing from the installed package" >&2; exit 1; }
done
if [ -e "$tmp/prefix/include/loom/cli" ]; then echo "install: cli/ headers must not be installed" >&2; exit 1; fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$src/examples/embed" -B "$tmp/embed" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$tmp/prefix" >"$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log" >&2; exit 1; }
cmake --build "$tmp/embed" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; exit 1; }
if ldd "$tmp/embed/embed" | grep -q "$build/libloom"; then echo "install: embed links the build tree's libloom" >&2; exit 1; fi
checkpoint=$src/tests/data/checkpoint-v1
prompt="the cat sat"
got=$(OMP_NUM_THREADS=1 "$tmp/embed/embed" "$checkpoint" "$prompt" 2>/dev/null)
want=$("$tmp/prefix/bin/loom" --threads 1 generate "$checkpoint" --prompt "$prompt" --temperature 0 --max-new-tokens 24 2>/dev/null)
echo "embed: $got"
[ -n "$got" ] && [ "$got" != "$prompt" ] || { echo "install: embed printed no continuation" >&2; exit 1; }
[ "$got" = "$want" ] || { echo "install: embed and loom generate differ: '$want'" >&2; exit 1; }
echo "install: examples/embed built against the installed package and matches loom generate"
