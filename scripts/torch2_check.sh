#!/usr/bin/env bash
# Builds loom against a PyTorch 2.x wheel's libtorch and runs the tests there: the check that the
# code still builds and runs on libtorch 2.x as well as on Debian's 1.13, for a machine that has
# PyTorch but none of Debian's -dev packages (the GPU machine lent to some sessions, which cannot
# download anything).
#   scripts/torch2_check.sh prepare          here: the Debian 12 .debs it needs, into .debs/
#   scripts/torch2_check.sh run [CTEST_ARGS] there (.debs/ carried): unpack them under /tmp/root,
#                                            configure build-t2/ against python3's torch, build, ctest
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libyaml-cpp-dev libyaml-cpp0.7 libfmt-dev libfmt9 libspdlog-dev libspdlog1.10 libcli11-dev
          nlohmann-json3-dev libcpp-httplib-dev libcpp-httplib0.11 libgtest-dev libsentencepiece-dev
          libsentencepiece0 libprotobuf-dev libprotobuf32 zlib1g-dev libssl-dev libssl3 libbrotli-dev
          libbrotli1 pkgconf pkgconf-bin libpkgconf3 pkg-config)
case "${1:-}" in
prepare)
  mkdir -p .debs
  (cd .debs && apt-get download "${packages[@]}")
  ;;
run)
  shift
  R=/tmp/root
  mkdir -p $R /tmp/bin
  for f in .debs/*.deb; do dpkg -x "$f" $R; done
  if ! command -v pkg-config >/dev/null; then
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' $R/usr/lib/x86_64-linux-gnu $R/usr/bin/pkgconf >/tmp/bin/pkg-config
    chmod +x /tmp/bin/pkg-config
    export PATH=/tmp/bin:$PATH
  fi
  export PKG_CONFIG_LIBDIR=$R/usr/lib/x86_64-linux-gnu/pkgconfig:$R/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$R
  export PATH=$PATH:/usr/local/cuda/bin
  # CMake's environment variable takes ':' between prefixes.
  export CMAKE_PREFIX_PATH="$(python3 -c 'import torch.utils; print(torch.utils.cmake_prefix_path)'):$R/usr"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
  # zlib1g-dev's libz.so points to a runtime package not unpacked here, so CMake would pick the
  # static libz.a, which a shared library cannot link: use the machine's own libz.so.1.
  rm -f $R/usr/lib/x86_64-linux-gnu/libz.a $R/usr/lib/x86_64-linux-gnu/libz.so
  z=$(ldconfig -p | awk '/libz.so.1 /{print $NF; exit}')
  cmake -S . -B build-t2 -G Ninja -DCMAKE_BUILD_TYPE=Release -DZLIB_LIBRARY="$z" -DZLIB_LIBRARY_RELEASE="$z" \
        -DZLIB_INCLUDE_DIR=$R/usr/include >build-t2.configure.log 2>&1 || { tail -40 build-t2.configure.log; exit 1; }
  ninja -C build-t2 -j"$(nproc)"
  cd build-t2 && ctest -j"$(nproc)" --timeout 300 "$@"
  ;;
*)
  sed -n 2,8p "$0" >&2
  exit 2
  ;;
esac
