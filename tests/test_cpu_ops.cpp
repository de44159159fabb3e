// The fast engine's vector loops (src/loom/infer/cpu_ops.h) against plain double-precision
// loops, on lengths with and without vector tails. Torch-free: builds alone with
//   g++ -O2 -std=c++17 -fopenmp -Isrc src/loom/infer/cpu_ops.cpp tests/test_cpu_ops.cpp
//       -lgtest -lgtest_main -pthread
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "loom/infer/cpu_ops.h"

namespace cpu = loom::cpu;

namespace {

std::vector<float> random_vector(int64_t n, uint32_t seed, float spread = 2.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

const int64_t kLengths[] = {1, 7, 16, 33, 64, 100, 513};

}  // namespace

TEST(CpuOps, ExpIsWithinThreeTenMillionthsOfLibm) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.00731f) {
    const double e = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(cpu::exp(x) - e) / e);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(cpu::exp(0.0f), 1.0f);
  // Clamped ends: no inf, no NaN, the right side of 1.
  EXPECT_TRUE(std::isfinite(cpu::exp(1000.0f)));
  EXPECT_GT(cpu::exp(1000.0f), 1e38f);
  EXPECT_GE(cpu::exp(-1000.0f), 0.0f);
  EXPECT_LT(cpu::exp(-1000.0f), 1e-37f);
}

TEST(CpuOps, ReductionsAndUpdatesMatchPlainLoops) {
  for (int64_t n : kLengths) {
    const auto a = random_vector(n, 1), b = random_vector(n, 2);
    double max = -INFINITY;
    for (int64_t i = 0; i < n; ++i) max = std::max<double>(max, a[i]);
    EXPECT_EQ(cpu::max(a.data(), n), max) << n;
    auto y = b;
    cpu::add(a.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], b[i] + a[i]) << n << " " << i;
    cpu::scale(y.data(), n, 3.0f);
    for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], 3.0f * (b[i] + a[i])) << n << " " << i;
  }
  EXPECT_EQ(cpu::max(nullptr, 0), -INFINITY);
}

TEST(CpuOps, ExpShiftedIsASoftmaxNumerator) {
  for (int64_t n : kLengths) {
    auto x = random_vector(n, 3, 5.0f);
    const auto original = x;
    const float top = cpu::max(x.data(), n);
    const float total = cpu::exp_shifted(x.data(), n, top);
    double want_total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double e = std::exp(static_cast<double>(original[i] - top));  // the float difference, as computed
      want_total += e;
      EXPECT_NEAR(x[i], e, 3e-7 * e + 1e-30) << n << " " << i;
    }
    EXPECT_NEAR(total, want_total, 1e-6 * want_total) << n;
    EXPECT_GE(total, 1.0f);  // the maximum contributes exp(0) = 1
  }
}

TEST(CpuOps, NormsMatchTheirDefinitions) {
  const float eps = 1e-5f;
  for (int64_t n : kLengths) {
    const auto x = random_vector(n, 4), w = random_vector(n, 5), b = random_vector(n, 6);
    double squares = 0, mean = 0;
    for (float v : x) squares += static_cast<double>(v) * v, mean += v;
    mean /= n;
    double var = 0;
    for (float v : x) var += (v - mean) * (v - mean);
    const double rms_inv = 1 / std::sqrt(squares / n + eps), ln_inv = 1 / std::sqrt(var / n + eps);
    std::vector<float> y(n), z(n), zb(n);
    cpu::rms_norm(x.data(), w.data(), n, eps, y.data());
    cpu::layer_norm(x.data(), w.data(), nullptr, n, eps, z.data());
    cpu::layer_norm(x.data(), w.data(), b.data(), n, eps, zb.data());
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(y[i], x[i] * rms_inv * w[i], 1e-5 * (1 + std::fabs(y[i]))) << n << " " << i;
      const double ln = (x[i] - mean) * ln_inv * w[i];
      EXPECT_NEAR(z[i], ln, 1e-4 * (1 + std::fabs(ln))) << n << " " << i;
      EXPECT_NEAR(zb[i], ln + b[i], 1e-4 * (1 + std::fabs(ln))) << n << " " << i;
    }
    auto in_place = x;
    cpu::rms_norm(in_place.data(), w.data(), n, eps, in_place.data());
    EXPECT_EQ(in_place, y) << n;
  }
}

TEST(CpuOps, SwiGluMatchesItsDefinition) {
  for (int64_t n : kLengths) {
    auto gate = random_vector(n, 7, 6.0f);
    const auto up = random_vector(n, 8);
    gate[0] = -120.0f;  // exp(120) is clamped: silu is still ~0, not NaN
    std::vector<float> y(n);
    cpu::silu_mul(gate.data(), up.data(), n, y.data());
    for (int64_t i = 0; i < n; ++i) {
      const double silu = gate[i] / (1 + std::exp(-static_cast<double>(gate[i])));
      EXPECT_NEAR(y[i], silu * up[i], 1e-6 * (1 + std::fabs(silu * up[i]))) << n << " " << i;
    }
  }
}

TEST(CpuOps, AttentionRowsMatchPlainLoops) {
  for (int64_t dim : {16, 64, 72}) {
    for (int64_t count : {1, 3, 4, 9, 130}) {
      const auto q = random_vector(dim, 9), rows = random_vector(count * dim, 10), p = random_vector(count, 11);
      std::vector<float> s(count), out(dim, 123.0f);  // out is overwritten, not added to
      cpu::dot_rows(q.data(), rows.data(), count, dim, 0.25f, s.data());
      cpu::weighted_rows(p.data(), rows.data(), count, dim, out.data());
      for (int64_t j = 0; j < count; ++j) {
        double want = 0;
        for (int64_t i = 0; i < dim; ++i) want += static_cast<double>(q[i]) * rows[j * dim + i];
        EXPECT_NEAR(s[j], 0.25 * want, 1e-5 * dim) << dim << " " << count << " " << j;
      }
      for (int64_t i = 0; i < dim; ++i) {
        double want = 0;
        for (int64_t j = 0; j < count; ++j) want += static_cast<double>(p[j]) * rows[j * dim + i];
        EXPECT_NEAR(out[i], want, 1e-5 * count) << dim << " " << count << " " << i;
      }
    }
  }
}
