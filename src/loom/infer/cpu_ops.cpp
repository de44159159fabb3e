#include "loom/infer/cpu_ops.h"

#include <cmath>
#include <limits>

// One clone per instruction set (see cpu_ops.h); the default clone is what non-x86 builds get.
#if defined(__x86_64__) && !defined(LOOM_CPU_OPS_NO_CLONES)
#define LOOM_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define LOOM_CLONES
#endif

namespace loom::cpu {
namespace {

// exp(x) = 2^n * p(r): n = round(x log2 e) by the 1.5 * 2^23 trick (x is clamped, so |x log2 e| is
// far below 2^22), r = x - n ln 2 with ln 2 split so that n * kLn2Hi is exact, 2^n built in the
// exponent bits (n >= -126 after the clamp: a normal float).
__attribute__((always_inline)) inline float exp_poly(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  constexpr float kMagic = 12582912.0f, kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860682030941723e-6f;
  const float n = (x * kLog2e + kMagic) - kMagic;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

}  // namespace

LOOM_CLONES void dot_rows(const float* q, const float* rows, int64_t count, int64_t dim, float scale, float* s) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float *r0 = rows + j * dim, *r1 = r0 + dim, *r2 = r1 + dim, *r3 = r2 + dim;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t i = 0; i < dim; ++i) {
      a0 += q[i] * r0[i];
      a1 += q[i] * r1[i];
      a2 += q[i] * r2[i];
      a3 += q[i] * r3[i];
    }
    s[j] = a0 * scale, s[j + 1] = a1 * scale, s[j + 2] = a2 * scale, s[j + 3] = a3 * scale;
  }
  for (; j < count; ++j) {
    const float* r = rows + j * dim;
    float a = 0.0f;
#pragma omp simd reduction(+ : a)
    for (int64_t i = 0; i < dim; ++i) a += q[i] * r[i];
    s[j] = a * scale;
  }
}

LOOM_CLONES void weighted_rows(const float* p, const float* rows, int64_t count, int64_t dim, float* out) {
  for (int64_t i = 0; i < dim; ++i) out[i] = 0.0f;
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float *r0 = rows + j * dim, *r1 = r0 + dim, *r2 = r1 + dim, *r3 = r2 + dim;
    const float p0 = p[j], p1 = p[j + 1], p2 = p[j + 2], p3 = p[j + 3];
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) out[i] += (p0 * r0[i] + p1 * r1[i]) + (p2 * r2[i] + p3 * r3[i]);
  }
  for (; j < count; ++j) {
    const float* r = rows + j * dim;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) out[i] += p[j] * r[i];
  }
}

LOOM_CLONES void add(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

LOOM_CLONES float max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

float exp(float x) { return exp_poly(x); }

LOOM_CLONES float exp_shifted(float* x, int64_t n, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    x[i] = exp_poly(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

LOOM_CLONES void scale(float* x, int64_t n, float s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

LOOM_CLONES void rms_norm(const float* x, const float* w, int64_t n, float eps, float* y) {
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < n; ++i) squares += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(squares / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv * w[i];
}

LOOM_CLONES void layer_norm(const float* x, const float* w, const float* b, int64_t n, float eps, float* y) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += x[i];
  const float mean = total / static_cast<float>(n);
  float var = 0.0f;
#pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float inv = 1.0f / std::sqrt(var / static_cast<float>(n) + eps);
  if (b != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * inv * w[i] + b[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * inv * w[i];
  }
}

LOOM_CLONES void silu_mul(const float* gate, const float* up, int64_t n, float* y) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}

}  // namespace loom::cpu
