// Vector loops of the fast engine (infer/fast_engine.cpp): dot products, softmax pieces, norms and
// gated activations on contiguous fp32 rows. The project is built for baseline x86-64 (SSE2), so
// each function is compiled for AVX-512, AVX2+FMA and baseline and picked when the program loads
// (GCC's target_clones), with `omp simd` making GCC vectorize the reductions.
//
// exp here is a polynomial, not libm's: exp(x) = 2^n * p(r), n = round(x / ln 2), r = x - n ln 2
// (two-part ln 2), p the degree-6 Taylor polynomial; relative error below 2e-7 on [-87, 88]
// (tests/test_cpu_ops.cpp checks it against std::exp), x clamped to that range (exp(-87) = 1.6e-38,
// so softmax and SiLU lose nothing a float can hold). Everything else is plain fp32 arithmetic
// whose only difference from a sequential loop is the order of summation.
//
// Torch-free, like quant/kernels.h: it builds and tests alone with g++ -fopenmp.
#pragma once
#include <cstdint>

namespace loom::cpu {

void add(const float* x, float* y, int64_t n);  // y += x
float max(const float* x, int64_t n);           // -inf when n == 0
// Attention for one query row over `count` cached rows of `dim` floats (row j at rows + j * dim):
// s[j] = scale * (q . row j), and out = sum_j p[j] * row j. Four rows per pass, so that q and out
// are loaded and stored once per four rows.
void dot_rows(const float* q, const float* rows, int64_t count, int64_t dim, float scale, float* s);
void weighted_rows(const float* p, const float* rows, int64_t count, int64_t dim, float* out);
float exp(float x);  // the polynomial, one value
// x[i] = exp(x[i] - shift) for i < n; returns the sum of the new x.
float exp_shifted(float* x, int64_t n, float shift);
void scale(float* x, int64_t n, float s);  // x *= s

// y = x / sqrt(mean(x^2) + eps) * w, and LayerNorm: (x - mean) / sqrt(var + eps) * w + b (b may be
// null). y may be x.
void rms_norm(const float* x, const float* w, int64_t n, float eps, float* y);
void layer_norm(const float* x, const float* w, const float* b, int64_t n, float eps, float* y);

// y = silu(gate) * up (SwiGLU's middle), silu(x) = x / (1 + exp(-x)).
void silu_mul(const float* gate, const float* up, int64_t n, float* y);

}  // namespace loom::cpu
