#!/usr/bin/env bash
# Installs what loom needs from Debian 12's archive (skipped when already installed), then
# configures and builds loom in ./build. Used by both README commands and by CI.
#   scripts/setup.sh [--no-build]   --no-build: the packages only (scripts/build_torch2.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  cmake g++ ninja-build pkg-config
  libtorch-dev            # the tensor and autograd engine
  libgloo-dev             # c10d's Gloo headers: multi-process training (libtorch links libgloo0)
  iproute2                # tests: the two-host training test joins network namespaces
  libopenblas0-pthread    # fast fp32 BLAS: libtorch only *recommends* it (else ~60x slower matmuls)
  libopenblas-dev         # bench/quant_matvec: the kernels against CBLAS sgemv/sgemm
  libsentencepiece-dev    # tokenizer training and encoding
  libyaml-cpp-dev libcli11-dev nlohmann-json3-dev libfmt-dev libspdlog-dev zlib1g-dev
  libcpp-httplib-dev      # loom serve's HTTP server (and the tests' client)
  libgtest-dev            # tests
  clang-format-14         # tests: the code is as .clang-format says
  clang-14 libclang-rt-14-dev  # scripts/fuzz.sh: libFuzzer with ASan and UBSan
  hey wrk                 # bench/serve_load.sh: HTTP load generators
  python3-venv            # tests: scripts/venv.sh's .venv of PyPI reference peers (sacrebleu)
  r-cran-janeaustenr      # the default corpus: Jane Austen's six novels
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${1:-}" = --no-build ] && exit 0

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
# Two jobs: one translation unit that includes torch needs ~1 GB and ~10 s.
ninja -C build -j2
