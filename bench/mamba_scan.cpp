// The fused selective-scan kernel against the recurrent libtorch reference (same contract,
// nn/mixer/selective_scan.h): forward + backward time at a Mamba-layer shape, one JSON line each.
//   mamba_scan [THREADS] [B] [T] [D_INNER] [D_STATE] [REPEATS]
#include <chrono>
#include <cstdio>

#include "loom/core/runtime.h"
#include "loom/nn/mixer/selective_scan.h"

namespace {

template <class Scan>
double time_ms(Scan scan, int repeats) {
  scan();  // warm-up
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) scan();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / repeats;
}

}  // namespace

int main(int argc, char** argv) {
  loom::ensure_runtime_environment(argc, argv);
  const int threads = loom::configure_threads(argc > 1 ? std::atoi(argv[1]) : 0);
  const int64_t b = argc > 2 ? std::atoll(argv[2]) : 8, t = argc > 3 ? std::atoll(argv[3]) : 256;
  const int64_t di = argc > 4 ? std::atoll(argv[4]) : 256, n = argc > 5 ? std::atoll(argv[5]) : 16;
  const int repeats = argc > 6 ? std::atoi(argv[6]) : 3;
  torch::manual_seed(0);
  auto u = torch::randn({b, t, di}, torch::requires_grad());
  auto delta = torch::nn::functional::softplus(torch::randn({b, t, di}) - 2).detach().requires_grad_();
  auto A = (-torch::rand({di, n}) * 4).detach().requires_grad_();
  auto Bm = torch::randn({b, t, n}, torch::requires_grad());
  auto Cm = torch::randn({b, t, n}, torch::requires_grad());
  auto D = torch::randn({di}, torch::requires_grad());
  auto run = [&](auto scan) {
    return [&, scan] {
      auto y = scan(u, delta, A, Bm, Cm, D, torch::Tensor()).first;
      y.sum().backward();
    };
  };
  const double reference = time_ms(run(loom::selective_scan_reference), repeats);
  const double fused = time_ms(run(loom::selective_scan), repeats);
  std::printf(
      "{\"bench\": \"mamba_scan\", \"threads\": %d, \"shape\": [%lld, %lld, %lld, %lld], "
      "\"reference_ms\": %.1f, \"fused_ms\": %.1f, \"speedup\": %.2f}\n",
      threads, static_cast<long long>(b), static_cast<long long>(t), static_cast<long long>(di),
      static_cast<long long>(n), reference, fused, reference / fused);
}
