#!/usr/bin/env bash
# Builds loom against the libtorch inside PyPI's torch 2.x wheel (instead of Debian's libtorch
# 1.13) and runs the test suite on the CPU, on this Debian 12 machine: the check that the code
# builds and passes on libtorch 2.x too. CI runs only the Debian 1.13 build (scripts/test.sh).
#   scripts/build_torch2.sh [CTEST_ARGS...]     e.g. scripts/build_torch2.sh -R Distributed
# What it does:
#   - Debian's packages (scripts/setup.sh --no-build), .venv and the SmolLM2 GGUF the tests use
#     (scripts/venv.sh, scripts/fetch_smollm2.sh), as scripts/test.sh does;
#   - .venv-torch2 (python3 -m venv) with the latest torch wheel. PyPI's is built with CUDA, and
#     its CMake package (Caffe2Config) configures only with a CUDA toolkit, nvcc included: NVIDIA's
#     pip packages of the wheel's CUDA version (cuda-toolkit[nvcc]) are installed beside it and
#     assembled under .venv-torch2/cuda as a CUDA root (bin/nvcc, include, lib64). Nothing of CUDA
#     runs: the tests run on the CPU. About 6 GB on disk (download ~3 GB);
#   - build-t2/ configured with CMake against that torch, built with ninja -j2, then ctest.
# The pip step runs only when torch or nvcc is missing from .venv-torch2 (rm -rf .venv-torch2 to
# take a newer torch), so a rerun is only an incremental build and ctest.
# TORCH2_WHEELS=DIR: when DIR holds a torch wheel, install from the wheels in it alone (pip
# --no-index --find-links DIR: torch, its dependencies and cuda-toolkit[nvcc]'s, e.g. from
# `pip download`), for a machine without PyPI; otherwise download from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --no-build
scripts/venv.sh
scripts/fetch_smollm2.sh >/dev/null

venv=$PWD/.venv-torch2
py=$venv/bin/python
pip_args=(--disable-pip-version-check --no-cache-dir -q)  # no cache: it would hold another 3 GB
if [ -n "${TORCH2_WHEELS:-}" ] && compgen -G "$TORCH2_WHEELS/torch-*.whl" >/dev/null; then
  echo "build_torch2: installing from the wheels in $TORCH2_WHEELS"
  pip_args+=(--no-index --find-links "$TORCH2_WHEELS")
fi
pip_install() { nice -n 10 "$py" -m pip install "${pip_args[@]}" "$@"; }
# The version of an installed distribution, or nothing.
version_of() { "$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true; }

[ -x "$py" ] || /usr/bin/python3 -m venv "$venv"
if [ -z "$(version_of torch)" ]; then
  echo "build_torch2: pip install torch (about 3 GB)"
  pip_install torch
fi
cuda=$("$py" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null)
cmake_cuda=()
if [ -n "$cuda" ]; then
  root=$venv/cuda
  if [ ! -x "$root/bin/nvcc" ]; then
    # nvcc of the CUDA version the wheel's own runtime packages have: cuda-toolkit's extra for
    # CUDA 13 wheels (torch 2.15: tested), nvidia-cuda-nvcc-cu12 for CUDA 12 ones (untested).
    if toolkit=$(version_of cuda-toolkit) && [ -n "$toolkit" ]; then
      nvcc_packages=("cuda-toolkit[nvcc]==$toolkit")
    elif runtime=$(version_of nvidia-cuda-runtime-cu12) && [ -n "$runtime" ]; then
      nvcc_packages=("nvidia-cuda-nvcc-cu12==$runtime")
    else
      echo "build_torch2: torch is built with CUDA $cuda, but no CUDA runtime package is installed" >&2
      exit 1
    fi
    echo "build_torch2: pip install ${nvcc_packages[*]} (CUDA $cuda, for torch's CMake package)"
    pip_install "${nvcc_packages[@]}"
    # One CUDA root from NVIDIA's packages, each a partial toolkit (CUDA 13: one nvidia/cu13;
    # CUDA 12: nvidia/cuda_nvcc, nvidia/cuda_runtime, ...): links to their files. nvcc finds the
    # rest relative to the path it was called by (nvcc.profile: bin/.., lib, nvvm), and CMake's
    # find_library wants the unversioned names (libcudart.so), which the packages leave out.
    site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf "$root"
    mkdir -p "$root/bin" "$root/include" "$root/lib64"
    ln -s lib64 "$root/lib"
    for pkg in "$site"/nvidia/*/; do
      for dir in bin include lib; do
        [ -d "$pkg$dir" ] || continue
        dest=$root/$dir
        [ $dir = lib ] && dest=$root/lib64
        for f in "$pkg$dir"/*; do [ -e "$dest/${f##*/}" ] || ln -s "$f" "$dest/"; done
      done
      [ -d "${pkg}nvvm" ] && [ ! -e "$root/nvvm" ] && ln -s "${pkg}nvvm" "$root/nvvm"
    done
    for f in "$root"/lib64/lib*.so.*; do
      base=${f%%.so.*}.so
      [ -e "$base" ] || ln -s "${f##*/}" "$base"
    done
    [ -x "$root/bin/nvcc" ] || { echo "build_torch2: no nvcc in $root/bin after the install" >&2; exit 1; }
  fi
  cmake_cuda=(-DCUDAToolkit_ROOT="$root" -DCUDA_TOOLKIT_ROOT_DIR="$root" -DCMAKE_CUDA_COMPILER="$root/bin/nvcc")
fi
"$py" -c 'import torch; print("build_torch2: torch", torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null

# torch's CMake package (torch/share/cmake) and torch/ itself: TorchConfig looks its libraries up
# with find_library(... PATHS torch/lib), which searches the system's directories first and would
# take Debian's libtorch.so and libc10.so from there; a prefix's lib/ comes before them.
prefix=$("$py" -c 'import os, torch.utils; p = torch.utils.cmake_prefix_path; print(p + ";" + os.path.dirname(torch.__file__))' 2>/dev/null)
if [ ! -f build-t2/build.ninja ]; then
  cmake -S . -B build-t2 -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" "${cmake_cuda[@]}" \
        >build-t2.configure.log 2>&1 || { tail -40 build-t2.configure.log; rm -f build-t2/build.ninja; exit 1; }
fi
# The same torch and CUDA root for the CMake projects the tests configure themselves (the Install
# test builds examples/embed against the installed loom, whose loomConfig finds Torch again; else
# it would find Debian's).
export CMAKE_PREFIX_PATH="${prefix//;/:}${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
if [ -n "$cuda" ]; then
  export CUDAToolkit_ROOT=$root CUDA_PATH=$root CUDACXX=$root/bin/nvcc PATH=$root/bin:$PATH
fi
# Two jobs: one translation unit that includes torch needs ~1 GB and ~10 s (more with 2.x headers).
nice -n 10 ninja -C build-t2 -j2
cd build-t2
# libtorch 2.x runs 2 intra-op threads per process on 2 cores (1.13: 1), so two tests at a time
# spin in OpenMP's barriers against each other: on a busy machine a test that takes 3 s alone
# (Translate.GreedyIsArgmaxDecoding) timed out at 600 s. `loom` sets this for itself
# (core/runtime.h); the test binary does not.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ctest --output-on-failure --timeout 600 -j2 "$@"
