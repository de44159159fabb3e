// Quantized linear layers for CPU decoding: y = x · W^T with W stored as int8 (one scale per
// row, the CTranslate2 layout) or as llama.cpp's Q4_0 blocks, x and y in fp32.
// Shapes: n activation rows (1 when decoding one token), cols = input features, rows = output
// features. x: [n, cols], W: [rows, cols], y: [n, rows], all row-major and contiguous.
//
// Batch-1 decoding reads every weight once per token and does two flops per weight, so it is
// bound by memory bandwidth: the kernels exist to stream fewer bytes (1 or 0.5625 per weight
// instead of 4) at close to the machine's read bandwidth. The activations are quantized too, to
// int8 in blocks of 32 with one fp32 scale per block (like llama.cpp's Q8 activations, with an
// fp32 instead of an fp16 scale), so the inner loop is an integer dot product (AVX-512 VNNI
// vpdpbusd, or AVX2 vpmaddubsw). Error bound against the float product with the dequantized
// weights: |y - y_exact| <= sum over blocks b of (xs_b / 2) * sum_{j in b} |W[r][j]| plus float
// rounding, where xs_b = max|x_b| / 127 (each activation is off by at most half a step).
//
// Every kernel has a plain scalar reference (linear_*_ref) computing the same arithmetic, so the
// fast paths equal it up to the order of float summation; tests/test_kernels.cpp checks both,
// bench/quant_matvec.cpp measures them against OpenBLAS.
//
// This file and kernels.cpp (with io/ggml_blocks.cpp) are deliberately free of torch and fmt: they
// build and test alone with g++ -fopenmp. Invalid arguments throw std::invalid_argument.
#pragma once
#include <cstdint>

#include "loom/io/ggml_blocks.h"

namespace loom::quant {

// ---- formats -------------------------------------------------------------------------------

// The Q4_0 and Q8_0 blocks are ggml's (io/ggml_blocks.h), used here under this namespace too.
using ggml::BlockQ4_0;
using ggml::BlockQ8_0;
using ggml::dequantize_q4_0;
using ggml::dequantize_q8_0;
using ggml::fp16_to_fp32;
using ggml::fp32_to_fp16;
using ggml::quantize_q4_0;
using ggml::quantize_q8_0;
constexpr int64_t kQ4Block = ggml::kBlock;  // weights per BlockQ4_0 / BlockQ8_0 / activation block

// int8 per row, symmetric: scale[r] = max_c |W[r][c]| / 127, q[r][c] = round(W[r][c] / scale[r])
// (half away from zero); a zero row gets scale 0 and q 0. q is always in [-127, 127].
void quantize_int8(const float* w, int64_t rows, int64_t cols, int8_t* q, float* scale);
void dequantize_int8(const int8_t* q, const float* scale, int64_t rows, int64_t cols, float* w);

// ---- kernels -------------------------------------------------------------------------------

// Which instruction set a kernel call uses. kAuto picks the best one this CPU (and OS) supports:
//   kAvx512:   AVX-512 F/BW/VL + VNNI (vpdpbusd) + VBMI (vpermb/vpermt2b to unpack Q4_0 blocks),
//              e.g. Ice Lake, Sapphire Rapids, Zen 4;
//   kAvx2:     AVX2 + FMA + F16C (Haswell, Zen 1-3; also AVX-512 CPUs without VNNI/VBMI);
//   kPortable: plain C++ (the reference arithmetic), for any CPU.
// Requesting an unsupported one throws. The project is not built with -march=native: each path
// is compiled with its own target attribute and chosen at run time.
enum class Isa { kAuto, kPortable, kAvx2, kAvx512 };
bool isa_supported(Isa isa);
Isa best_isa();  // never kAuto
const char* isa_name(Isa isa);

// y[i][r] = sum_c x[i][c] * W[r][c] with W[r][c] = scale[r] * w[r][c] (see quantize_int8); any
// cols >= 1; x finite; y must not overlap x. Threads: OpenMP over output rows (the caller's
// omp_set_num_threads; calls too small to gain from a second thread, and calls from inside a
// parallel region, run on the calling thread). No allocation after the first calls: the
// quantized activations live in per-thread buffers that grow to the largest n * cols seen.
void linear_int8(const float* x, int64_t n, int64_t cols, const int8_t* w, const float* scale, int64_t rows, float* y,
                 Isa isa = Isa::kAuto);

// Same with W in Q4_0 blocks: w holds rows * cols / 32 blocks, row r's blocks at w + r * cols / 32;
// cols % 32 == 0.
void linear_q4_0(const float* x, int64_t n, int64_t cols, const BlockQ4_0* w, int64_t rows, float* y,
                 Isa isa = Isa::kAuto);

// The same, for callers that run a whole decode step inside one OpenMP parallel region (saving
// a fork/join, ~1-3 us, per call): every thread of the enclosing team must call it with the same
// arguments, like a collective; the rows are split among the team (an orphaned "omp for") and
// every thread returns once all of y is written. Each thread quantizes all n activations itself,
// so this is meant for small n. Outside a parallel region it runs on the calling thread alone.
// Never call it from code that only some threads of a team execute (omp single, a loop body
// of omp for): OpenMP worksharing must be met by the whole team. Validate arguments first: an
// exception cannot leave a parallel region.
void linear_int8_team(const float* x, int64_t n, int64_t cols, const int8_t* w, const float* scale, int64_t rows,
                      float* y, Isa isa = Isa::kAuto);
void linear_q4_0_team(const float* x, int64_t n, int64_t cols, const BlockQ4_0* w, int64_t rows, float* y,
                      Isa isa = Isa::kAuto);

// The plain scalar references, single-threaded, defining the arithmetic every path computes:
// each activation row is quantized per block b of 32 (xs_b = max|x_b| / 127, xq = nearbyint(x / xs_b)
// computed as x * (1 / xs_b), clamped to +-127; the last block of a row zero-padded; a block with
// max|x| < 1e-30 is all zeros, since 1 / xs_b would overflow), then
//   int8: y = scale[r] * sum_b xs_b * float(sum_{j in b} w[r][j] * xq[j])
//   Q4_0: y = sum_b (fp16(d_rb) * xs_b) * float(sum_{j in b} (q_rbj - 8) * xq[j])
// with the integer sums exact; only the order of the float sum over b differs between paths.
void linear_int8_ref(const float* x, int64_t n, int64_t cols, const int8_t* w, const float* scale, int64_t rows,
                     float* y);
void linear_q4_0_ref(const float* x, int64_t n, int64_t cols, const BlockQ4_0* w, int64_t rows, float* y);

}  // namespace loom::quant
