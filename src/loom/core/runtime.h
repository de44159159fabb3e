// Process-wide runtime settings: threads and BLAS. Measured on these machines
// (../shared/LIBTORCH.md): libtorch defaults to half the cores, OpenBLAS ignores libtorch's
// thread count, OpenMP workers that spin fight OpenBLAS's threads, and a fresh libtorch install
// may run on the reference BLAS at 1/60 of the speed.
#pragma once
#include <string>
#include <vector>

namespace loom {

// How idle OpenMP threads wait for the next parallel region.
//   kPassive: they sleep at once (training: keeps them off the cores OpenBLAS's threads use);
//   kActive: they spin (decoding: a token's many short kernel calls would otherwise each pay a
//            futex wake-up, about a millisecond per token here);
//   kSpinThenSleep: libgomp's default, spin a while then sleep (a server between requests).
enum class WaitPolicy { kPassive, kActive, kSpinThenSleep };

// Call first thing in main(). OpenMP reads OMP_WAIT_POLICY and OpenBLAS reads OPENBLAS_CORETYPE
// when their libraries load, before main(), so this sets what needs setting and re-executes the
// program once: OMP_WAIT_POLICY as `policy` says (unless the user set it), and OPENBLAS_CORETYPE
// when OpenBLAS's own detection fell short of the CPU (openblas_core_for; unless the user set it);
// returns only if no re-exec was needed (or it failed).
void ensure_runtime_environment(int argc, char** argv, WaitPolicy policy = WaitPolicy::kPassive);

// The OpenBLAS core type to ask for when OpenBLAS detected `detected` on a CPU with these
// /proc/cpuinfo `flags`, or "" to keep its choice. OpenBLAS names CPUs by family and model, so a
// virtual machine's masked CPU ("Intel Xeon Processor") can fall back to Prescott's SSE3 kernels,
// 3.7x slower in fp32 training here than the Cooperlake kernels its AVX-512 BF16 flags allow.
std::string openblas_core_for(const std::string& detected, const std::string& flags);

struct BlasInfo {
  std::string name;    // "OpenBLAS", "reference BLAS", ...
  std::string config;  // OpenBLAS's own build description, if any
  std::vector<std::string> warnings;
};

// What BLAS libtorch's fp32 matmuls will use, and what limits it.
BlasInfo inspect_blas();

// Sets libtorch's intra-op threads, OpenMP's and OpenBLAS's to `threads` (<= 0: all cores)
// and logs warnings about slow settings once. Returns the thread count in effect.
int configure_threads(int threads);

}  // namespace loom
