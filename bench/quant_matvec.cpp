// Quantized matrix-vector kernels (src/loom/quant/kernels.h) against OpenBLAS fp32, at the linear
// shapes of the LLaMA-style bench model (d_model 512, d_ff 1536, vocab 8192, 8 layers), plus the
// machine's read bandwidth measured in the same run. Torch-free; build and run by hand:
//   nice -n 10 g++ -O2 -std=c++17 -fopenmp -Isrc src/loom/quant/kernels.cpp bench/quant_matvec.cpp
//       -lopenblas -o /tmp/quant_matvec
//   env -u OPENBLAS_CORETYPE /tmp/quant_matvec [--quick | --decode]
// (--quick: one sweep, no n = 512; --decode: only the per-token decode step, 5 sweeps)
// (OPENBLAS_CORETYPE=Haswell, set in this environment for libtorch, would keep OpenBLAS off its
// AVX-512 kernels.)
//
// Weight bytes streamed per call: fp32 4 per weight, int8 1 (+ 4 per row for the scale), Q4_0
// 18 per 32. "hot" repeats one matrix (it stays in L2/L3 when small enough); "cold" cycles through
// copies totalling > 3x the L3 size, so every call streams from DRAM. The per-token estimate
// sums the per-shape times of one decode step (8 x (qkv, o, gate/up, down) + output projection);
// "chained" runs that step for real over distinct weights for every layer, which is what decoding
// sees (the Q4_0 model, 17.7 MB, fits in a 32 MB L3; the fp32 one, 126 MB, does not).
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "loom/quant/kernels.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace q = loom::quant;

namespace {

using Clock = std::chrono::steady_clock;

// Best of `batches` short batches, each repeated until it lasts >= min_batch_s: on a machine
// shared with other processes, the minimum over many batches shorter than a scheduler time slice
// is the closest to an undisturbed run.
double seconds_per_call(const std::function<void(int)>& call, double min_batch_s = 0.002, int batches = 40) {
  call(0);  // warm-up (and first-call buffer growth)
  int reps = 1;
  for (;;) {
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) call(i);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s >= min_batch_s) break;
    reps *= 2;
  }
  double best = 1e30;
  for (int b = 0; b < batches; ++b) {
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) call(i);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count() / reps);
  }
  return best;
}

// Sums count floats (count % 64 == 0) with 4 independent accumulators, 256 bytes per step.
__attribute__((target("avx2"))) float sum_floats(const float* a, size_t count) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < count; i += 64) {
    s0 = _mm256_add_ps(s0, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(a + i + 32)));
    s1 = _mm256_add_ps(s1, _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(a + i + 40)));
    s2 = _mm256_add_ps(s2, _mm256_add_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(a + i + 48)));
    s3 = _mm256_add_ps(s3, _mm256_add_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(a + i + 56)));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  float total = 0;
  for (float l : lanes) total += l;
  return total;
}

double read_bandwidth_gbs(int threads) {
  const size_t count = size_t{256} << 20 >> 2;  // 256 MB of floats
  std::vector<float> a(count, 1.0f);
  volatile float sink = 0;
  const double s = seconds_per_call(
      [&](int) {
        float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
        {
          const size_t chunk = count / omp_get_num_threads() / 64 * 64, begin = chunk * omp_get_thread_num();
          total +=
              sum_floats(a.data() + begin, omp_get_thread_num() == omp_get_num_threads() - 1 ? count - begin : chunk);
        }
        sink = total;
      },
      0.1, 5);
  return count * 4.0 / s / 1e9;
}

struct Shape {
  const char* name;
  int64_t rows, cols;
  int per_token;  // times per decode step
};

// One shape's weights in the three formats, each format `copies` times contiguous, copies[f]
// chosen so that each format's set exceeds cold_bytes (the cold rotation).
struct Weights {
  int64_t rows = 0, cols = 0;
  int64_t copies[3] = {1, 1, 1};  // fp32, int8, q4_0
  std::vector<float> f32;
  std::vector<int8_t> i8;
  std::vector<float> scale;
  std::vector<q::BlockQ4_0> q4;

  Weights(int64_t rows_, int64_t cols_, double cold_bytes, std::mt19937& rng) : rows(rows_), cols(cols_) {
    const double bytes[3] = {4.0 * rows * cols, 1.0 * rows * cols, 18.0 * rows * cols / 32};
    for (int f = 0; f < 3; ++f) copies[f] = cold_bytes > 0 ? static_cast<int64_t>(cold_bytes / bytes[f]) + 2 : 1;
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<float> w(rows * cols);
    for (auto& v : w) v = normal(rng);
    // The copies share values (the kernels don't care); what matters is distinct addresses.
    f32.resize(rows * cols * copies[0]);
    i8.resize(rows * cols * copies[1]);
    scale.resize(rows * copies[1]);
    q4.resize(rows * cols / 32 * copies[2]);
    for (int64_t c = 0; c < copies[0]; ++c) std::copy(w.begin(), w.end(), f32.begin() + c * rows * cols);
    q::quantize_int8(w.data(), rows, cols, i8.data(), scale.data());
    q::quantize_q4_0(w.data(), rows * cols, q4.data());
    for (int64_t c = 1; c < copies[1]; ++c) {
      std::copy(i8.begin(), i8.begin() + rows * cols, i8.begin() + c * rows * cols);
      std::copy(scale.begin(), scale.begin() + rows, scale.begin() + c * rows);
    }
    for (int64_t c = 1; c < copies[2]; ++c)
      std::copy(q4.begin(), q4.begin() + rows * cols / 32, q4.begin() + c * rows * cols / 32);
  }
  const float* f32_at(int64_t c) const { return f32.data() + c * rows * cols; }
  const int8_t* i8_at(int64_t c) const { return i8.data() + c * rows * cols; }
  const float* scale_at(int64_t c) const { return scale.data() + c * rows; }
  const q::BlockQ4_0* q4_at(int64_t c) const { return q4.data() + c * rows * cols / 32; }
};

enum Format { kF32, kInt8, kQ4, kFormats };
const char* const kFormatName[kFormats] = {"fp32", "int8", "q4_0"};

double weight_bytes(Format f, int64_t rows, int64_t cols) {
  switch (f) {
    case kF32: return 4.0 * rows * cols;
    case kInt8: return 1.0 * rows * cols + 4.0 * rows;
    default: return 18.0 * rows * cols / 32;
  }
}

void run(Format f, const Weights& w, int64_t copy, const float* x, int64_t n, float* y) {
  switch (f) {
    case kF32:
      if (n == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, w.rows, w.cols, 1.0f, w.f32_at(copy), w.cols, x, 1, 0.0f, y, 1);
      } else {  // y[n, rows] = x[n, cols] . W[rows, cols]^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, w.rows, w.cols, 1.0f, x, w.cols, w.f32_at(copy), w.cols,
                    0.0f, y, w.rows);
      }
      break;
    case kInt8: q::linear_int8(x, n, w.cols, w.i8_at(copy), w.scale_at(copy), w.rows, y); break;
    default: q::linear_q4_0(x, n, w.cols, w.q4_at(copy), w.rows, y); break;
  }
}

// OpenBLAS's worker threads busy-wait for up to 2^28 cycles (OPENBLAS_THREAD_TIMEOUT, ~0.1 s)
// after each call; OpenMP threads started meanwhile would fight them for the two cores.
void park_openblas() { std::this_thread::sleep_for(std::chrono::milliseconds(250)); }

void set_threads(int t) {
  omp_set_num_threads(t);
  openblas_set_num_threads(t);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool quick = mode == "--quick", decode_only = mode == "--decode";
  // Every measurement is repeated in `rounds` sweeps, minutes apart, and the best kept: a sweep
  // that overlaps someone else's burst of work on this shared machine then costs nothing.
  const int rounds = quick ? 1 : decode_only ? 5 : 3;
  std::printf("kernel isa: %s, %d rounds\n", q::isa_name(q::best_isa()), rounds);

  const Shape shapes[] = {{"qkv", 1536, 512, 8},
                          {"o", 512, 512, 8},
                          {"gate_up", 3072, 512, 8},
                          {"down", 512, 1536, 8},
                          {"output", 8192, 512, 1}};
  constexpr int kShapes = 5, kNs = 3;
  const int64_t ns[kNs] = {1, 8, 512};
  const double cold_bytes = 96e6;  // 3x the 32 MB L3
  std::mt19937 rng(0);
  std::vector<Weights> weights;
  for (const Shape& s : shapes)
    if (!decode_only) weights.emplace_back(s.rows, s.cols, cold_bytes, rng);
  // One decode step over distinct weights for each of the 8 layers, as decoding sees them.
  std::vector<Weights> layer_weights;
  for (int layer = 0; layer < 8; ++layer)
    for (int i = 0; i < 4; ++i) layer_weights.emplace_back(shapes[i].rows, shapes[i].cols, 0.0, rng);
  layer_weights.emplace_back(shapes[4].rows, shapes[4].cols, 0.0, rng);

  double bandwidth[2] = {0, 0};
  double hot[kShapes][kNs][2][kFormats], cold[kShapes][kNs][2][kFormats], chained[2][kFormats], team[2][2];
  double deq8[kShapes], deq4[kShapes];
  for (auto* table : {&hot[0][0][0][0], &cold[0][0][0][0]})
    std::fill(table, table + kShapes * kNs * 2 * kFormats, 1e30);
  std::fill(&chained[0][0], &chained[0][0] + 2 * kFormats, 1e30);
  std::fill(&team[0][0], &team[0][0] + 4, 1e30);
  std::fill(deq8, deq8 + kShapes, 1e30);
  std::fill(deq4, deq4 + kShapes, 1e30);
  for (int round = 0; round < rounds; ++round) {
    for (int t : {1, 2}) bandwidth[t - 1] = std::max(bandwidth[t - 1], read_bandwidth_gbs(t));
    for (int si = 0; si < kShapes && !decode_only; ++si) {
      const Shape& s = shapes[si];
      const Weights& w = weights[si];
      for (int ni = 0; ni < kNs; ++ni) {
        const int64_t n = ns[ni];
        if (quick && n == 512) continue;
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> x(n * s.cols), y(n * s.rows);
        for (auto& v : x) v = normal(rng);
        for (int t : {1, 2}) {
          set_threads(t);
          for (int f : {kInt8, kQ4, kF32}) {  // fp32 last, see park_openblas
            const Format fmt = static_cast<Format>(f);
            double& h = hot[si][ni][t - 1][f];
            h = std::min(h, seconds_per_call([&](int) { run(fmt, w, 0, x.data(), n, y.data()); }));
            double& c = cold[si][ni][t - 1][f];
            c = n == 512 ? h  // compute-bound: the copies would add nothing but time
                         : std::min(c, seconds_per_call([&](int i) {
                                      run(fmt, w, 1 + i % (w.copies[f] - 1), x.data(), n, y.data());
                                    }));
          }
          park_openblas();
        }
        if (n == 512) {  // the prefill alternative: dequantize (serial, once per call) then sgemm
          std::vector<float> deq(s.rows * s.cols);
          deq8[si] = std::min(deq8[si], seconds_per_call([&](int) {
                                q::dequantize_int8(w.i8_at(0), w.scale_at(0), s.rows, s.cols, deq.data());
                              }));
          deq4[si] = std::min(
              deq4[si], seconds_per_call([&](int) { q::dequantize_q4_0(w.q4_at(0), s.rows * s.cols, deq.data()); }));
        }
      }
    }
    std::vector<float> x(8192, 0.5f), y(8192);
    for (int t : {1, 2}) {
      set_threads(t);
      for (int f : {kInt8, kQ4, kF32}) {
        const Format fmt = static_cast<Format>(f);
        chained[t - 1][f] = std::min(chained[t - 1][f], seconds_per_call([&](int) {
                                       for (const Weights& w : layer_weights) run(fmt, w, 0, x.data(), 1, y.data());
                                     }));
        if (fmt == kF32) park_openblas();
      }
      // The same step in one parallel region with the _team variants: no fork/join per call.
      for (int f : {kInt8, kQ4}) {
        team[t - 1][f - kInt8] =
            std::min(team[t - 1][f - kInt8], seconds_per_call([&](int) {
#pragma omp parallel
                       for (const Weights& w : layer_weights) {
                         if (f == kInt8)
                           q::linear_int8_team(x.data(), 1, w.cols, w.i8_at(0), w.scale_at(0), w.rows, y.data());
                         else q::linear_q4_0_team(x.data(), 1, w.cols, w.q4_at(0), w.rows, y.data());
                       }
                     }));
      }
    }
    std::fprintf(stderr, "round %d done\n", round + 1);
  }

  for (int t : {1, 2})
    std::printf("read bandwidth, %d thread(s): %.1f GB/s (sum of a 256 MB float array)\n", t, bandwidth[t - 1]);
  if (!decode_only)
    std::printf("\n%-8s %5s %5s %4s %3s | %-9s %-9s %-9s | GB/s hot: %-6s %-6s %-6s | GB/s cold: %-6s %-6s %-6s\n",
                "shape", "rows", "cols", "n", "thr", "fp32 us", "int8 us", "q4_0 us", "fp32", "int8", "q4_0", "fp32",
                "int8", "q4_0");
  // token_s[threads - 1][format][hot/cold]: one decode step as the sum of its shapes at n = 1
  double token_s[2][kFormats][2] = {};
  for (int si = 0; si < kShapes && !decode_only; ++si) {
    const Shape& s = shapes[si];
    for (int ni = 0; ni < kNs; ++ni) {
      if (quick && ns[ni] == 512) continue;
      for (int t : {1, 2}) {
        const double* h = hot[si][ni][t - 1];
        const double* c = cold[si][ni][t - 1];
        auto gbs = [&](int f, double sec) { return weight_bytes(static_cast<Format>(f), s.rows, s.cols) / sec / 1e9; };
        std::printf(
            "%-8s %5lld %5lld %4lld %3d | %-9.1f %-9.1f %-9.1f |           %-6.1f %-6.1f %-6.1f |            %-6.1f "
            "%-6.1f %-6.1f\n",
            s.name, static_cast<long long>(s.rows), static_cast<long long>(s.cols), static_cast<long long>(ns[ni]), t,
            c[kF32] * 1e6, c[kInt8] * 1e6, c[kQ4] * 1e6, gbs(kF32, h[kF32]), gbs(kInt8, h[kInt8]), gbs(kQ4, h[kQ4]),
            gbs(kF32, c[kF32]), gbs(kInt8, c[kInt8]), gbs(kQ4, c[kQ4]));
        if (ns[ni] == 1)
          for (int f = 0; f < kFormats; ++f) {
            token_s[t - 1][f][0] += s.per_token * h[f];
            token_s[t - 1][f][1] += s.per_token * c[f];
          }
      }
      if (ns[ni] == 512)
        std::printf("%-8s   dequantize before sgemm (1 thread): int8 %.1f us, q4_0 %.1f us\n", s.name, deq8[si] * 1e6,
                    deq4[si] * 1e6);
    }
  }
  double model_bytes[kFormats] = {};
  for (const Weights& w : layer_weights)
    for (int f = 0; f < kFormats; ++f) model_bytes[f] += weight_bytes(static_cast<Format>(f), w.rows, w.cols);
  std::printf("\nper-token decode step (n = 1, 31.5M weights):\n");
  for (int t : {1, 2}) {
    for (int f : {kInt8, kQ4, kF32}) {
      if (!decode_only)
        std::printf("  %s %d thread(s): sum of shapes hot %.1f us (%.0f tok/s), cold %.1f us (%.0f tok/s)\n",
                    kFormatName[f], t, token_s[t - 1][f][0] * 1e6, 1 / token_s[t - 1][f][0], token_s[t - 1][f][1] * 1e6,
                    1 / token_s[t - 1][f][1]);
      std::printf("  %s %d thread(s): chained %.1f us = %.0f tok/s, %.1f GB/s (%.1f MB per token)\n", kFormatName[f], t,
                  chained[t - 1][f] * 1e6, 1 / chained[t - 1][f], model_bytes[f] / chained[t - 1][f] / 1e9,
                  model_bytes[f] / 1e6);
    }
    for (int f : {kInt8, kQ4})
      std::printf("  %s %d thread(s), one parallel region per step (_team calls): %.1f us = %.0f tok/s, %.1f GB/s\n",
                  kFormatName[f], t, team[t - 1][f - kInt8] * 1e6, 1 / team[t - 1][f - kInt8],
                  model_bytes[f] / team[t - 1][f - kInt8] / 1e9);
  }
  std::printf("(llama.cpp on this machine, whole model, 2 threads: Q8_0 868 tok/s, Q4_0 1391 tok/s)\n");
}
