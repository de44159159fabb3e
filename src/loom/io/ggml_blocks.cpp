// ggml's block codecs (see ggml_blocks.h), written from llama.cpp's reference quantizers
// (ggml-quants.c: quantize_row_q4_0_ref, quantize_row_q8_0_ref) and the IEEE fp16 format.
#include "loom/io/ggml_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace loom::ggml {

// ---- fp16 --------------------------------------------------------------------------------------

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in fp32
    return bits_float(sign | float_bits(static_cast<float>(mantissa) * 0x1p-24f));
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000 | (mantissa << 13));  // inf, NaN
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));        // rebias 15 -> 127
}

uint16_t fp32_to_fp16(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t a = x & 0x7fffffff;
  if (a >= 0x7f800000) {  // inf stays inf; NaN becomes a quiet NaN keeping the top payload bits
    return sign | (a == 0x7f800000 ? 0x7c00 : 0x7e00 | ((a >> 13) & 0x3ff));
  }
  if (a >= 0x477ff000) return sign | 0x7c00;                            // >= 65520 rounds past 65504, the largest half
  if (a >= 0x38800000) {                                                // normal half (>= 2^-14): round the low 13 bits
    const uint32_t rounded = a + 0xfff + ((a >> 13) & 1);               // to nearest, ties to even
    return sign | static_cast<uint16_t>((rounded - 0x38000000) >> 13);  // a carry bumps the exponent
  }
  if (a <= 0x33000000) return sign;  // <= 2^-25 (half the smallest subnormal) rounds to zero
  // Subnormal half: the value in units of 2^-24 is mantissa_with_implicit_1 >> (126 - exponent).
  const uint32_t exponent = a >> 23, m = (a & 0x7fffff) | 0x800000, shift = 126 - exponent;
  uint32_t q = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (q & 1))) ++q;  // may reach 0x400, the smallest normal: right
  return sign | static_cast<uint16_t>(q);
}

// ---- blocks --------------------------------------------------------------------------------------

namespace {

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("loom::ggml: ") + what);
}

}  // namespace

void quantize_q4_0(const float* x, int64_t k, BlockQ4_0* y) {
  check(k % kBlock == 0, "quantize_q4_0 needs a multiple of 32 values");
  for (int64_t b = 0; b < k / kBlock; ++b, x += kBlock) {
    float amax = 0.0f, max = 0.0f;  // the first value of largest magnitude wins, sign kept
    for (int j = 0; j < kBlock; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    // d = max / -8 maps the extreme value to q = 0 exactly; the other end reaches only +7, so a
    // block's resolution is spent where its largest value is.
    const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < 16; ++j) {
      // llama.cpp truncates x * id + 8.5 (in [0.5, 16.5]) toward zero and caps at 15.
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 8.5f)));
      y[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void dequantize_q4_0(const BlockQ4_0* x, int64_t k, float* y) {
  check(k % kBlock == 0, "dequantize_q4_0 needs a multiple of 32 values");
  for (int64_t b = 0; b < k / kBlock; ++b, y += kBlock) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * ((x[b].qs[j] & 0x0f) - 8);
      y[j + 16] = d * ((x[b].qs[j] >> 4) - 8);
    }
  }
}

void quantize_q8_0(const float* x, int64_t k, BlockQ8_0* y) {
  check(k % kBlock == 0, "quantize_q8_0 needs a multiple of 32 values");
  for (int64_t b = 0; b < k / kBlock; ++b, x += kBlock) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < kBlock; ++j) y[b].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

void dequantize_q8_0(const BlockQ8_0* x, int64_t k, float* y) {
  check(k % kBlock == 0, "dequantize_q8_0 needs a multiple of 32 values");
  for (int64_t b = 0; b < k / kBlock; ++b, y += kBlock) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < kBlock; ++j) y[j] = d * x[b].qs[j];
  }
}

}  // namespace loom::ggml
