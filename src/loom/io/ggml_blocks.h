// ggml's block formats, byte for byte as llama.cpp stores them in GGUF tensors and as loom's
// quantized kernels read them (quant/kernels.h), with the IEEE fp16 conversion they need.
// Torch- and fmt-free: it builds and tests alone (tests/test_kernels.cpp). Invalid arguments throw
// std::invalid_argument.
#pragma once
#include <cstdint>
#include <cstring>

namespace loom::ggml {

constexpr int64_t kBlock = 32;  // weights per BlockQ4_0 / BlockQ8_0

// llama.cpp's Q4_0 block: 32 consecutive weights of a row, x[j] = fp16(d) * (q[j] - 8), q[j] in
// the low nibble of qs[j] for j < 16 and in the high nibble of qs[j - 16] for j >= 16.
struct BlockQ4_0 {
  uint16_t d;  // IEEE fp16 bits
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ4_0) == 18, "BlockQ4_0 must match llama.cpp's block_q4_0");

// llama.cpp's Q8_0 block: x[j] = fp16(d) * qs[j].
struct BlockQ8_0 {
  uint16_t d;  // IEEE fp16 bits
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8_0) == 34, "BlockQ8_0 must match llama.cpp's block_q8_0");

// A float's bits and back (fp16 and bf16 conversions work on them).
inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// IEEE binary16 <-> binary32, bit-exact and portable: round to nearest even, overflow to inf,
// subnormals kept, NaN stays NaN (quiet). Same results as F16C's vcvtps2ph with imm 0.
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);

// llama.cpp's quantize_row_q4_0_ref / quantize_row_q8_0_ref on k consecutive floats (k % 32 == 0,
// a matrix is k = rows * cols with cols % 32 == 0), and the matching dequantization:
//   Q4_0: m = the value of largest |x| (sign kept), d = m / -8, id = d ? 1/d : 0,
//         q = min(15, (int8_t)(x * id + 8.5f))
//   Q8_0: d = max|x| / 127, id = d ? 1/d : 0, q = roundf(x * id)
void quantize_q4_0(const float* x, int64_t k, BlockQ4_0* y);
void dequantize_q4_0(const BlockQ4_0* x, int64_t k, float* y);
void quantize_q8_0(const float* x, int64_t k, BlockQ8_0* y);
void dequantize_q8_0(const BlockQ8_0* x, int64_t k, float* y);

}  // namespace loom::ggml
