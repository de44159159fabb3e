#!/usr/bin/env bash
# scripts/sanitize.sh [CTEST_ARGS...]: builds loom and its tests with AddressSanitizer and
# UndefinedBehaviorSanitizer (GCC, -O1) in build-asan/ and runs the suite there. Any sanitizer
# report fails its test: ASan aborts on the first error, UBSan is built to trap-and-abort.
# Without arguments it runs every test but the ones named below, which only repeat, slower,
# what the plain build already runs (long training, the downloaded SmolLM2, the package install).
# Needs the packages scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
flags="-O1 -g1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
flags+=" -fno-sanitize=vptr"  # libtorch's classes carry no RTTI for UBSan's vptr check
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_MODULE_LINKER_FLAGS="" >/dev/null
ninja -C build-asan -j2 loom loom_tests loom_sentencepiece
# Leak checking stays on; libtorch's and protobuf's process-lifetime singletons are not leaks.
export ASAN_OPTIONS=detect_leaks=1:detect_odr_violation=0:detect_container_overflow=0:abort_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd build-asan
if (($#)); then
  ctest --output-on-failure --timeout 900 -j2 "$@"
else
  ctest --output-on-failure --timeout 900 -j2 -E "$(cat ../tests/sanitize_skip.txt | grep -v '^#' | paste -sd'|')"
fi
