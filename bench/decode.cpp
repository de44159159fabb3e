// Prefill and decode speed of the fast engine (llama-bench's method): pp = one forward of
// `prompt` random tokens from an empty cache; tg = `steps` single-token steps from an empty cache;
// 1 warm-up, then `reps` repetitions, tokens/s mean and sd; no sampling or tokenization timed.
// For fp32, int8 and Q4_0 weights (round to nearest, from the same random fp32 model), with the
// memory read bandwidth measured in the same run and the fraction of the bandwidth bound each
// decode reaches (bound = bandwidth / bytes of weights read per token).
//
//   decode [RECIPE] [THREADS] [PROMPT] [STEPS] [REPS] [FORMATS]
//   defaults: recipes/bench/llama-512.yaml 2 512 128 5 f32,int8,q4_0
// Run with OPENBLAS_CORETYPE unset (bench/decode.sh does).
#include <omp.h>
#include <sys/mman.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <sstream>

#include "loom/checkpoint/recipe.h"
#include "loom/core/runtime.h"
#include "loom/infer/fast_engine.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Read bandwidth: the sum of a 512 MiB float array, threads splitting it, best of 5. Sixteen
// partial sums per thread, so the sum is load-bound (one chain of float adds would be latency-bound).
// A sum that is limited by memory, not by the adds: vector code for this CPU (the project is built
// for baseline x86-64), 64 partial sums.
__attribute__((target_clones("avx512f", "avx2", "default"))) double sum_floats(const float* x, int64_t n) {
  float acc[64] = {};
  for (int64_t i = 0; i + 64 <= n; i += 64)
    for (int j = 0; j < 64; ++j) acc[j] += x[i + j];
  double total = 0;
  for (float a : acc) total += a;
  for (int64_t i = n / 64 * 64; i < n; ++i) total += x[i];
  return total;
}

// Read bandwidth over 512 MiB on 2 MiB pages, as the engine's weights are (infer/fast_engine.cpp):
// on 4 KiB pages the TLB misses would lower the bound the decode speed is compared with.
double read_bandwidth_gbs() {
  const int64_t n = int64_t{128} << 20;
  void* p = nullptr;
  if (posix_memalign(&p, size_t{2} << 20, n * sizeof(float)) != 0) throw std::bad_alloc();
  std::unique_ptr<float, decltype(&free)> owner(static_cast<float*>(p), &free);
#ifdef MADV_HUGEPAGE
  madvise(p, n * sizeof(float), MADV_HUGEPAGE);
#endif
  float* data = owner.get();
  std::fill_n(data, n, 1.0f);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = Clock::now();
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
      const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t begin = n * t / threads / 64 * 64, end = t + 1 == threads ? n : n * (t + 1) / threads / 64 * 64;
      total += sum_floats(data + begin, end - begin);
    }
    const double s = seconds_since(start);
    if (total != static_cast<double>(n)) std::printf("bandwidth: wrong sum %.0f\n", total);
    best = std::max(best, n * 4.0 / s / 1e9);
  }
  return best;
}

struct Stat {
  double mean = 0, sd = 0;
};
Stat stat(const std::vector<double>& v) {
  Stat s;
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / (v.size() - 1)) : 0;
  return s;
}

// Bytes of weights one decode step reads: every linear in its format (the embedding row is noise).
double weight_bytes_per_token(const loom::ModelConfig& c, loom::WeightFormat format) {
  const double d = c.d_model, ff = c.d_ff, hd = c.head_dim();
  const double per_layer = d * (c.n_heads + 2 * c.kv_heads()) * hd + c.n_heads * hd * d + d * 2 * ff + ff * d;
  const double weights = c.n_layers * per_layer + c.vocab_size * d;
  const double rows = c.n_layers * ((c.n_heads + 2 * c.kv_heads()) * hd + d + 2 * ff + d) + c.vocab_size;
  switch (format) {
    case loom::WeightFormat::kInt8: return weights + 4 * rows;  // int8 weights + an fp32 scale per row
    case loom::WeightFormat::kQ4_0: return weights * 18.0 / 32.0;
    default: return weights * 4;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP threads spin between kernel calls, as llama.cpp's threads do.
  loom::ensure_runtime_environment(argc, argv, loom::WaitPolicy::kActive);
  try {
    const std::string path = argc > 1 ? argv[1] : "recipes/bench/llama-512.yaml";
    const int threads = loom::configure_threads(argc > 2 ? std::atoi(argv[2]) : 2);
    const int64_t prompt = argc > 3 ? std::atoll(argv[3]) : 512;
    const int64_t steps = argc > 4 ? std::atoll(argv[4]) : 128;
    const int reps = argc > 5 ? std::atoi(argv[5]) : 5;
    const std::string formats = argc > 6 ? argv[6] : "f32,int8,q4_0";
    auto recipe = loom::load_recipe(path, {});
    const auto& c = recipe.model;
    torch::manual_seed(0);
    loom::Model model(c);
    model->eval();
    const double bandwidth = read_bandwidth_gbs();
    std::printf("model %s: %lld parameters; %d threads; read bandwidth %.1f GB/s\n", path.c_str(),
                static_cast<long long>(model->num_parameters()), threads, bandwidth);
    std::printf("%-6s %22s %22s %12s %12s\n", "format", "prefill tok/s", "decode tok/s", "MB/token", "of bound");
    std::stringstream list(formats);
    std::string name;
    while (std::getline(list, name, ',')) {
      loom::FastEngineOptions options;
      options.weights = name == "f32"    ? loom::WeightFormat::kF32
                        : name == "int8" ? loom::WeightFormat::kInt8
                        : name == "q4_0" ? loom::WeightFormat::kQ4_0
                                         : (loom::fail("unknown format {}", name), loom::WeightFormat::kF32);
      options.engine.slots = 1;
      auto engine = loom::make_fast_engine(model, {}, options);
      auto random_tokens = [&](int64_t n) {
        auto t = torch::randint(c.vocab_size, {n});
        return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
      };
      std::vector<double> pp, tg;
      for (int rep = 0; rep <= reps; ++rep) {  // rep 0 warms up
        engine->reset(0);
        const auto tokens = random_tokens(prompt);
        auto start = Clock::now();
        engine->forward({0}, {tokens});
        const double pp_s = seconds_since(start);
        engine->reset(0);
        const auto next = random_tokens(steps);
        start = Clock::now();
        for (int64_t i = 0; i < steps; ++i) engine->forward({0}, {{next[i]}});
        const double tg_s = seconds_since(start);
        if (rep > 0) pp.push_back(prompt / pp_s), tg.push_back(steps / tg_s);
      }
      const auto p = stat(pp), t = stat(tg);
      const double bytes = weight_bytes_per_token(c, options.weights);
      const double bound = bandwidth * 1e9 / bytes;
      std::printf("%-6s %12.0f ± %-7.0f %12.0f ± %-7.1f %12.1f %11.0f%%\n", name.c_str(), p.mean, p.sd, t.mean, t.sd,
                  bytes / 1e6, 100 * t.mean / bound);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decode: error: %s\n", e.what());
    return 1;
  }
}
