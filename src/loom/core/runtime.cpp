#include "loom/core/runtime.h"

#include <dlfcn.h>
#include <omp.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "loom/core/log.h"

namespace loom {

namespace {

// The "flags" line of /proc/cpuinfo ("" when there is none).
std::string cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("flags", 0) == 0) return line.substr(line.find(':') + 1) + " ";
  return "";
}

// 3: AVX-512 kernels, 2: AVX2, 1: older.
int core_level(const std::string& core) {
  for (const char* name : {"SkylakeX", "Cooperlake", "SapphireRapids"})
    if (core == name) return 3;
  for (const char* name : {"Haswell", "Zen", "Excavator"})
    if (core == name) return 2;
  return 1;
}

}  // namespace

std::string openblas_core_for(const std::string& detected, const std::string& flags) {
  auto has = [&](const char* flag) {
    return (" " + flags + " ").find(std::string(" ") + flag + " ") != std::string::npos;
  };
  std::string want;
  if (has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq"))
    want = has("avx512_bf16") ? "Cooperlake" : "SkylakeX";
  else if (has("avx2") && has("fma")) want = "Haswell";
  return !want.empty() && core_level(detected) < core_level(want) ? want : "";
}

void ensure_runtime_environment(int argc, char** argv, WaitPolicy policy) {
  if (std::getenv("LOOM_RUNTIME_READY") != nullptr) return;
  bool changed = false;
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    if (policy == WaitPolicy::kPassive) setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    if (policy == WaitPolicy::kActive) setenv("OMP_WAIT_POLICY", "ACTIVE", 1);
    changed = true;
  }
  using GetCore = char* (*)();
  auto get_core = reinterpret_cast<GetCore>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr && get_core != nullptr) {
    const std::string core = openblas_core_for(get_core(), cpu_flags());
    if (!core.empty()) {
      setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
      setenv("LOOM_OPENBLAS_CORETYPE", core.c_str(), 1);  // loom's choice, not the user's: no warning
      changed = true;
    }
  }
  if (!changed) return;
  setenv("LOOM_RUNTIME_READY", "1", 1);  // the re-executed program leaves things as they are
  std::vector<char*> args(argv, argv + argc);
  args.push_back(nullptr);
  execv("/proc/self/exe", args.data());
  // execv only returns on failure: carry on with the spinning default.
}

BlasInfo inspect_blas() {
  BlasInfo info;
  using GetConfig = char* (*)();
  auto get_config = reinterpret_cast<GetConfig>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  if (get_config != nullptr) {
    info.name = "OpenBLAS";
    info.config = get_config();
    auto get_core = reinterpret_cast<GetConfig>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
    if (get_core != nullptr) info.config += std::string(" core=") + get_core();
  } else if (dlsym(RTLD_DEFAULT, "bli_info_get_version_str") != nullptr) {
    info.name = "BLIS";
  } else if (dlsym(RTLD_DEFAULT, "MKL_Get_Max_Threads") != nullptr) {
    info.name = "MKL";
  } else {
    info.name = "reference BLAS";
    info.warnings.push_back(
        "fp32 matmuls run on the reference BLAS (~7 GFLOP/s here, ~60x slower than OpenBLAS): "
        "install libopenblas0-pthread");
  }
  const char* ours = std::getenv("LOOM_OPENBLAS_CORETYPE");
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  if (coretype != nullptr && ours != nullptr && std::string(ours) == coretype) {
    info.config += " (OPENBLAS_CORETYPE set by loom: OpenBLAS's detection fell short of this CPU)";
  } else if (coretype != nullptr) {
    info.warnings.push_back(
        fmt::format("OPENBLAS_CORETYPE={} is set: OpenBLAS may skip its fastest kernels for this CPU "
                    "(Haswell halves fp32 speed on AVX-512 machines)",
                    coretype));
  }
  return info;
}

int configure_threads(int threads) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  if (threads <= 0) threads = cores > 0 ? cores : 1;
  at::set_num_threads(threads);
  omp_set_num_threads(threads);
  // OpenBLAS keeps its own pool and ignores at::set_num_threads.
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(threads);

  static bool warned = false;
  if (!warned) {
    warned = true;
    for (const auto& w : inspect_blas().warnings) logger().warn("{}", w);
    if (threads > cores && cores > 0)
      logger().warn("--threads {} exceeds the {} cores of this machine", threads, cores);
  }
  return threads;
}

}  // namespace loom
