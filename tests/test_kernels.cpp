// Quantized kernels (src/loom/quant/kernels.h): the formats bit for bit (hand-checked values and an
// independent re-implementation of llama.cpp's formulas), fp16 conversion, and every kernel path
// this CPU supports against the scalar reference and against the float product with the
// dequantized weights. Torch-free: builds alone with
//   g++ -O2 -std=c++17 -fopenmp -Isrc src/loom/quant/kernels.cpp src/loom/io/ggml_blocks.cpp
//       tests/test_kernels.cpp
//       -lgtest -lgtest_main -pthread
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "loom/quant/kernels.h"

namespace q = loom::quant;

namespace {

// fp16 -> double without the library: sign * 2^(e - 15) * 1.m, or 2^-14 * 0.m for subnormals.
double half_value(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double v = e == 31  ? (m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity())
                   : e == 0 ? std::ldexp(m, -24)
                            : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

// Round to nearest even by search: the largest finite half <= |f| (bit patterns of positive halves
// are ordered like their values), then whichever neighbour is closer, the even one on a tie.
uint16_t half_nearest(float f) {
  const double a = std::fabs(static_cast<double>(f));
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (a >= 65520.0) return sign | 0x7c00;
  uint16_t lo = 0, hi = 0x7bff;
  while (lo < hi) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (half_value(mid) <= a) lo = mid;
    else hi = static_cast<uint16_t>(mid - 1);
  }
  if (lo == 0x7bff) return sign | lo;  // 65504 <= a < 65520
  const double below = a - half_value(lo), above = half_value(lo + 1) - a;
  const bool up = above < below || (above == below && (lo & 1));
  return sign | static_cast<uint16_t>(up ? lo + 1 : lo);
}

// llama.cpp's quantize_row_q4_0_ref and quantize_row_q8_0_ref for one block, written from the
// formula independently of the library.
q::BlockQ4_0 q4_block_independent(const float* x) {
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j)
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
  const float d = max / -8, id = d ? 1.0f / d : 0.0f;
  q::BlockQ4_0 b;
  b.d = half_nearest(d);
  for (int j = 0; j < 16; ++j) {
    const uint8_t x0 = std::min<uint8_t>(15, static_cast<int8_t>(x[j] * id + 8.5f));
    const uint8_t x1 = std::min<uint8_t>(15, static_cast<int8_t>(x[16 + j] * id + 8.5f));
    b.qs[j] = static_cast<uint8_t>(x0 | (x1 << 4));
  }
  return b;
}

q::BlockQ8_0 q8_block_independent(const float* x) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
  q::BlockQ8_0 b;
  b.d = half_nearest(d);
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
  return b;
}

std::vector<float> random_vector(size_t size, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(size);
  for (auto& e : v) e = normal(rng);
  return v;
}

std::vector<q::Isa> supported_isas() {
  std::vector<q::Isa> out;
  for (q::Isa isa : {q::Isa::kPortable, q::Isa::kAvx2, q::Isa::kAvx512})
    if (q::isa_supported(isa)) out.push_back(isa);
  return out;
}

// The activation quantization error bound of kernels.h: per block b of 32, each xq is off by at
// most half a step xs_b / 2, so |y - x . W_deq| <= sum_b xs_b / 2 * sum_{j in b} |W_deq[j]|. The
// float sums add a relative 1e-5 of sum |x| |W_deq| on top.
double error_bound(const float* x, const float* w_deq, int64_t cols) {
  double bound = 0, magnitude = 0;
  for (int64_t c0 = 0; c0 < cols; c0 += 32) {
    double amax = 0, wsum = 0;
    for (int64_t c = c0; c < std::min(cols, c0 + 32); ++c) {
      amax = std::max(amax, std::fabs(static_cast<double>(x[c])));
      wsum += std::fabs(w_deq[c]);
      magnitude += std::fabs(static_cast<double>(x[c]) * w_deq[c]);
    }
    bound += amax / 127 / 2 * wsum;
  }
  return bound * (1 + 1e-5) + 1e-5 * magnitude + 1e-30;
}

// Compares y (from one path) with the reference y_ref and with the exact product x . W_deq^T.
void expect_close(const std::vector<float>& x, const std::vector<float>& w_deq, int64_t n, int64_t cols, int64_t rows,
                  const std::vector<float>& y, const std::vector<float>& y_ref, const char* what) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* xi = x.data() + i * cols;
      const float* wr = w_deq.data() + r * cols;
      double exact = 0, magnitude = 0;
      for (int64_t c = 0; c < cols; ++c) {
        exact += static_cast<double>(xi[c]) * wr[c];
        magnitude += std::fabs(static_cast<double>(xi[c]) * wr[c]);
      }
      const float got = y[i * rows + r], ref = y_ref[i * rows + r];
      ASSERT_NEAR(got, ref, 2e-6 * magnitude + 1e-30) << what << " vs reference at i=" << i << " r=" << r;
      ASSERT_NEAR(got, exact, error_bound(xi, wr, cols)) << what << " vs exact at i=" << i << " r=" << r;
    }
  }
}

}  // namespace

// ---- fp16 --------------------------------------------------------------------------------------

TEST(QuantKernels, Fp16SpecialValues) {
  struct Case {
    float f;
    uint16_t h;
  };
  const Case cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3c00},
      {-2.0f, 0xc000},
      {0.5f, 0x3800},
      {65504.0f, 0x7bff},
      {65519.0f, 0x7bff},
      {65520.0f, 0x7c00},
      {1e9f, 0x7c00},
      {-1e9f, 0xfc00},
      {std::numeric_limits<float>::infinity(), 0x7c00},
      {-std::numeric_limits<float>::infinity(), 0xfc00},
      {0x1p-14f, 0x0400},                    // smallest normal
      {0x1p-24f, 0x0001},                    // smallest subnormal
      {0x1p-25f, 0x0000},                    // half of it: tie, to even (zero)
      {0x1.8p-25f, 0x0001},                  // 0.75 of it: up
      {0x1.8p-24f, 0x0002},                  // 1.5 units: tie, to even (2)
      {0x1.4p-23f, 0x0002},                  // 2.5 units: tie, to even (2)
      {1.0f + 0x1p-11f, 0x3c00},             // tie between 1 and 1 + 2^-10: even is 1
      {1.0f + 0x1.8p-10f, 0x3c02},           // 1.5 ulps: tie, to even (2 ulps)
      {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01},  // just above the tie: up
      {0x1.ffcp-15f, 0x0400},                // the largest subnormal rounds up into the normals
      {1e-10f, 0x0000},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(q::fp32_to_fp16(c.f), c.h) << c.f;
    EXPECT_EQ(q::fp32_to_fp16(c.f), half_nearest(c.f)) << c.f;
  }
  EXPECT_TRUE(std::isnan(q::fp16_to_fp32(q::fp32_to_fp16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(q::fp32_to_fp16(std::numeric_limits<float>::quiet_NaN()) & 0x7c00, 0x7c00);
  EXPECT_TRUE(std::isinf(q::fp16_to_fp32(0xfc00)) && q::fp16_to_fp32(0xfc00) < 0);
  EXPECT_EQ(q::fp16_to_fp32(0x0001), 0x1p-24f);
  EXPECT_EQ(q::fp16_to_fp32(0x3555), 0x1.554p-2f);
}

TEST(QuantKernels, Fp16EveryHalfRoundTripsAndRandomFloatsRoundToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = q::fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_EQ(h & 0x7c00, 0x7c00u);
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), half_value(static_cast<uint16_t>(h))) << h;
    ASSERT_EQ(q::fp32_to_fp16(f), h) << h;
  }
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 200000; ++i) {
    // floats of every exponent near the half range: 2^-30 .. 2^17
    uint32_t bits = any_bits(rng);
    bits = (bits & 0x807fffff) | ((97 + bits % 48) << 23);
    float f;
    std::memcpy(&f, &bits, 4);
    ASSERT_EQ(q::fp32_to_fp16(f), half_nearest(f)) << f;
  }
}

// ---- int8 --------------------------------------------------------------------------------------

TEST(QuantKernels, Int8QuantizeHandChecked) {
  const float w[3 * 4] = {0.5f,   -127.0f, 0.0f, 63.5f,  // scale 1; halves round away from zero
                          254.0f, -1.0f,   3.0f, 0.0f,   // scale 2
                          0.0f,   0.0f,    0.0f, 0.0f};  // zero row
  int8_t qw[12];
  float scale[3];
  q::quantize_int8(w, 3, 4, qw, scale);
  EXPECT_EQ(scale[0], 1.0f);
  EXPECT_EQ(qw[0], 1);
  EXPECT_EQ(qw[1], -127);
  EXPECT_EQ(qw[2], 0);
  EXPECT_EQ(qw[3], 64);
  EXPECT_EQ(scale[1], 2.0f);
  EXPECT_EQ(qw[4], 127);
  EXPECT_EQ(qw[5], -1);
  EXPECT_EQ(qw[6], 2);
  EXPECT_EQ(qw[7], 0);
  EXPECT_EQ(scale[2], 0.0f);
  for (int c = 8; c < 12; ++c) EXPECT_EQ(qw[c], 0);
}

TEST(QuantKernels, Int8RoundTripWithinHalfAStep) {
  std::mt19937 rng(2);
  const int64_t rows = 9, cols = 77;
  auto w = random_vector(rows * cols, rng);
  std::vector<int8_t> qw(rows * cols);
  std::vector<float> scale(rows), back(rows * cols);
  q::quantize_int8(w.data(), rows, cols, qw.data(), scale.data());
  q::dequantize_int8(qw.data(), scale.data(), rows, cols, back.data());
  for (int64_t r = 0; r < rows; ++r) {
    int max_q = 0;
    for (int64_t c = 0; c < cols; ++c) {
      EXPECT_LE(std::fabs(back[r * cols + c] - w[r * cols + c]), scale[r] * 0.5001f);
      max_q = std::max(max_q, std::abs(static_cast<int>(qw[r * cols + c])));
    }
    EXPECT_EQ(max_q, 127);  // the largest weight maps to +-127
  }
}

// ---- Q4_0 / Q8_0 -------------------------------------------------------------------------------

TEST(QuantKernels, Q4_0HandCheckedBlocks) {
  // Block 0: the largest magnitude is -8 (negative), so d = 1 and q = trunc(x + 8.5), capped at 15.
  // Block 1: the largest magnitude is +4, so d = -0.5, id = -2: q = trunc(8.5 - 2x).
  // Block 2: all zeros: d = 0, every q = 8.
  float x[96] = {};
  for (int j = 0; j < 16; ++j) x[j] = static_cast<float>(j - 8);
  x[16] = 7.9f;        // 16.4 -> 16 -> capped to 15
  x[17] = -7.6f;       // 0.9 -> 0
  x[18] = 0.49f;       // 8.99 -> 8
  x[19] = 0.5f;        // 9.0 -> 9
  x[32 + 5] = 4.0f;    // 0.5 -> 0
  x[32 + 6] = -4.0f;   // 16.5 -> 16 -> 15
  x[32 + 7] = 1.0f;    // 6.5 -> 6
  x[32 + 20] = -1.2f;  // 10.9 -> 10
  q::BlockQ4_0 b[3];
  q::quantize_q4_0(x, 96, b);
  EXPECT_EQ(b[0].d, 0x3c00);  // 1.0
  EXPECT_EQ(b[0].qs[0], 0xf0);
  EXPECT_EQ(b[0].qs[1], 0x01);
  EXPECT_EQ(b[0].qs[2], 0x82);
  EXPECT_EQ(b[0].qs[3], 0x93);
  for (int j = 4; j < 16; ++j) EXPECT_EQ(b[0].qs[j], 0x80 | j);
  EXPECT_EQ(b[1].d, 0xb800);  // -0.5
  EXPECT_EQ(b[1].qs[5], 0x80);
  EXPECT_EQ(b[1].qs[6], 0x8f);
  EXPECT_EQ(b[1].qs[7], 0x86);
  EXPECT_EQ(b[1].qs[4], 0xa8);  // element 20 is the high nibble of qs[4]
  EXPECT_EQ(b[1].qs[0], 0x88);
  EXPECT_EQ(b[2].d, 0x8000);  // 0 / -8 = -0, as llama.cpp stores it
  for (int j = 0; j < 16; ++j) EXPECT_EQ(b[2].qs[j], 0x88);
  float back[96];
  q::dequantize_q4_0(b, 96, back);
  EXPECT_EQ(back[0], -8.0f);
  EXPECT_EQ(back[16], 7.0f);  // capped: 15 - 8
  EXPECT_EQ(back[19], 1.0f);
  EXPECT_EQ(back[32 + 5], 4.0f);
  EXPECT_EQ(back[32 + 6], -3.5f);  // capped: (15 - 8) * -0.5
  EXPECT_EQ(back[32 + 20], -1.0f);
  EXPECT_EQ(back[64 + 3], 0.0f);
}

TEST(QuantKernels, Q8_0HandCheckedBlock) {
  float x[32] = {};
  x[0] = 127.0f;  // amax: d = 1
  x[1] = -63.5f;  // -> -64 (roundf: away from zero)
  x[2] = 0.5f;    // -> 1
  x[3] = -0.49f;  // -> 0
  x[4] = 2.5f;    // -> 3
  q::BlockQ8_0 b[2];
  float zeros[32] = {};
  q::quantize_q8_0(x, 32, b);
  q::quantize_q8_0(zeros, 32, b + 1);
  EXPECT_EQ(b[0].d, 0x3c00);
  EXPECT_EQ(b[0].qs[0], 127);
  EXPECT_EQ(b[0].qs[1], -64);
  EXPECT_EQ(b[0].qs[2], 1);
  EXPECT_EQ(b[0].qs[3], 0);
  EXPECT_EQ(b[0].qs[4], 3);
  EXPECT_EQ(b[0].qs[5], 0);
  EXPECT_EQ(b[1].d, 0);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(b[1].qs[j], 0);
  float back[32];
  q::dequantize_q8_0(b, 32, back);
  EXPECT_EQ(back[1], -64 * q::fp16_to_fp32(b[0].d));
}

TEST(QuantKernels, Q4_0AndQ8_0MatchIndependentFormulaBitForBit) {
  std::mt19937 rng(3);
  const int64_t blocks = 500;
  auto x = random_vector(blocks * 32, rng);
  // Some blocks with ties, exact extremes, zeros and tiny or huge values.
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j % 17) - 8.0f;
  for (int j = 32; j < 64; ++j) x[j] = 0.0f;
  for (int j = 64; j < 96; ++j) x[j] *= 1e-6f;
  for (int j = 96; j < 128; ++j) x[j] *= 1e4f;
  std::vector<q::BlockQ4_0> b4(blocks);
  std::vector<q::BlockQ8_0> b8(blocks);
  q::quantize_q4_0(x.data(), blocks * 32, b4.data());
  q::quantize_q8_0(x.data(), blocks * 32, b8.data());
  std::vector<float> back4(blocks * 32), back8(blocks * 32);
  q::dequantize_q4_0(b4.data(), blocks * 32, back4.data());
  q::dequantize_q8_0(b8.data(), blocks * 32, back8.data());
  for (int64_t b = 0; b < blocks; ++b) {
    const q::BlockQ4_0 e4 = q4_block_independent(x.data() + b * 32);
    const q::BlockQ8_0 e8 = q8_block_independent(x.data() + b * 32);
    ASSERT_EQ(std::memcmp(&b4[b], &e4, sizeof e4), 0) << "Q4_0 block " << b;
    ASSERT_EQ(std::memcmp(&b8[b], &e8, sizeof e8), 0) << "Q8_0 block " << b;
    for (int j = 0; j < 32; ++j) {
      const int nibble = j < 16 ? e4.qs[j] & 0x0f : e4.qs[j - 16] >> 4;
      ASSERT_EQ(back4[b * 32 + j], static_cast<float>(half_value(e4.d) * (nibble - 8)));
      ASSERT_EQ(back8[b * 32 + j], static_cast<float>(half_value(e8.d) * e8.qs[j]));
    }
  }
}

TEST(QuantKernels, RejectsBadShapes) {
  float x[48] = {};
  q::BlockQ4_0 b[2];
  EXPECT_THROW(q::quantize_q4_0(x, 48, b), std::invalid_argument);
  float y[1];
  EXPECT_THROW(q::linear_q4_0(x, 1, 48, b, 1, y), std::invalid_argument);
  EXPECT_THROW(q::linear_q4_0_ref(x, 1, 48, b, 1, y), std::invalid_argument);
}

// ---- kernels -----------------------------------------------------------------------------------

TEST(QuantKernels, Int8EveryPathMatchesReferenceAndExactProduct) {
  std::mt19937 rng(4);
  struct Shape {
    int64_t rows, cols, n;
  };
  // Odd shapes: rows not a multiple of 4 or 16, cols with partial 32- and 64-byte tails.
  const Shape shapes[] = {{1, 1, 1},     {7, 45, 3},   {13, 96, 17},  {37, 160, 1},
                          {50, 224, 17}, {19, 512, 3}, {33, 1000, 1}, {5, 31, 4}};
  for (const Shape& s : shapes) {
    auto w = random_vector(s.rows * s.cols, rng);
    auto x = random_vector(s.n * s.cols, rng);
    x[0] = 30.0f;  // an outlier: its block's other activations lose precision, not the others
    std::vector<int8_t> qw(w.size());
    std::vector<float> scale(s.rows), w_deq(w.size()), y_ref(s.n * s.rows);
    q::quantize_int8(w.data(), s.rows, s.cols, qw.data(), scale.data());
    q::dequantize_int8(qw.data(), scale.data(), s.rows, s.cols, w_deq.data());
    q::linear_int8_ref(x.data(), s.n, s.cols, qw.data(), scale.data(), s.rows, y_ref.data());
    for (q::Isa isa : supported_isas()) {
      std::vector<float> y(s.n * s.rows, -1.0f);
      q::linear_int8(x.data(), s.n, s.cols, qw.data(), scale.data(), s.rows, y.data(), isa);
      SCOPED_TRACE(testing::Message() << q::isa_name(isa) << " rows=" << s.rows << " cols=" << s.cols << " n=" << s.n);
      expect_close(x, w_deq, s.n, s.cols, s.rows, y, y_ref, q::isa_name(isa));
    }
  }
}

TEST(QuantKernels, Q4_0EveryPathMatchesReferenceAndExactProduct) {
  std::mt19937 rng(5);
  struct Shape {
    int64_t rows, cols, n;
  };
  // 1, 3, 5 and 7 blocks per row leave 1..3 blocks after the 4-block AVX-512 steps.
  const Shape shapes[] = {{1, 32, 1},    {7, 96, 3},   {13, 160, 17}, {37, 224, 1},
                          {50, 128, 17}, {19, 512, 3}, {33, 1536, 1}, {6, 64, 5}};
  for (const Shape& s : shapes) {
    auto w = random_vector(s.rows * s.cols, rng);
    auto x = random_vector(s.n * s.cols, rng);
    std::vector<q::BlockQ4_0> qw(w.size() / 32);
    std::vector<float> w_deq(w.size()), y_ref(s.n * s.rows);
    q::quantize_q4_0(w.data(), s.rows * s.cols, qw.data());
    q::dequantize_q4_0(qw.data(), s.rows * s.cols, w_deq.data());
    q::linear_q4_0_ref(x.data(), s.n, s.cols, qw.data(), s.rows, y_ref.data());
    for (q::Isa isa : supported_isas()) {
      std::vector<float> y(s.n * s.rows, -1.0f);
      q::linear_q4_0(x.data(), s.n, s.cols, qw.data(), s.rows, y.data(), isa);
      SCOPED_TRACE(testing::Message() << q::isa_name(isa) << " rows=" << s.rows << " cols=" << s.cols << " n=" << s.n);
      expect_close(x, w_deq, s.n, s.cols, s.rows, y, y_ref, q::isa_name(isa));
    }
  }
}

// Integer activations with a 127 in every block quantize exactly (xs = 1), so every path must give
// the integer dot product exactly, including weights of -128 (outside quantize_int8's range but
// representable) and Q4_0's extreme nibbles 0 and 15.
TEST(QuantKernels, ExactWhenActivationsAreIntegers) {
  const int64_t rows = 21, cols = 192, n = 3;
  std::mt19937 rng(6);
  std::uniform_int_distribution<int> byte(-128, 127), act(-127, 127), nibble(0, 15);
  std::vector<float> x(n * cols);
  for (int64_t i = 0; i < n * cols; ++i)
    x[i] = (i % 32 == 5) ? (i % 64 ? 127.0f : -127.0f) : static_cast<float>(act(rng));
  std::vector<int8_t> w8(rows * cols);
  for (auto& v : w8) v = static_cast<int8_t>(byte(rng));
  for (int64_t c = 0; c < cols; ++c) w8[c] = -128;  // row 0: all -128
  std::vector<float> ones(rows, 1.0f);
  std::vector<q::BlockQ4_0> w4(rows * cols / 32);
  for (auto& b : w4) {
    b.d = 0x3c00;  // 1.0
    for (auto& v : b.qs) v = static_cast<uint8_t>(nibble(rng) | nibble(rng) << 4);
  }
  for (auto& v : w4[0].qs) v = 0xf0;  // row 0, block 0: -8 and +7
  std::vector<float> w4_deq(rows * cols);
  q::dequantize_q4_0(w4.data(), rows * cols, w4_deq.data());
  for (q::Isa isa : supported_isas()) {
    std::vector<float> y8(n * rows), y4(n * rows);
    q::linear_int8(x.data(), n, cols, w8.data(), ones.data(), rows, y8.data(), isa);
    q::linear_q4_0(x.data(), n, cols, w4.data(), rows, y4.data(), isa);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t r = 0; r < rows; ++r) {
        int64_t e8 = 0;
        double e4 = 0;
        for (int64_t c = 0; c < cols; ++c) {
          e8 += static_cast<int64_t>(x[i * cols + c]) * w8[r * cols + c];
          e4 += x[i * cols + c] * w4_deq[r * cols + c];
        }
        ASSERT_EQ(y8[i * rows + r], static_cast<float>(e8)) << q::isa_name(isa) << " int8 i=" << i << " r=" << r;
        ASSERT_EQ(y4[i * rows + r], static_cast<float>(e4)) << q::isa_name(isa) << " q4_0 i=" << i << " r=" << r;
      }
    }
  }
}

TEST(QuantKernels, ZeroAndExtremeInputs) {
  const int64_t rows = 10, cols = 96, n = 2;
  std::mt19937 rng(7);
  auto w = random_vector(rows * cols, rng);
  std::vector<int8_t> qw(w.size());
  std::vector<float> scale(rows), w_deq(w.size());
  std::vector<q::BlockQ4_0> w4(w.size() / 32);
  q::quantize_int8(w.data(), rows, cols, qw.data(), scale.data());
  q::quantize_q4_0(w.data(), rows * cols, w4.data());
  for (q::Isa isa : supported_isas()) {
    // Zero activations (and activations too small to quantize) give exactly zero.
    for (float v : {0.0f, 1e-38f, -1e-45f}) {
      std::vector<float> x(n * cols, v), y8(n * rows, 1.0f), y4(n * rows, 1.0f);
      q::linear_int8(x.data(), n, cols, qw.data(), scale.data(), rows, y8.data(), isa);
      q::linear_q4_0(x.data(), n, cols, w4.data(), rows, y4.data(), isa);
      for (int64_t i = 0; i < n * rows; ++i) {
        ASSERT_EQ(y8[i], 0.0f) << q::isa_name(isa) << " x=" << v;
        ASSERT_EQ(y4[i], 0.0f) << q::isa_name(isa) << " x=" << v;
      }
    }
    // Huge activations scale through: y(1e30 * x) = 1e30 * y(x) up to rounding of the scales.
    auto x = random_vector(n * cols, rng);
    std::vector<float> big(x.size()), y(n * rows), y_big(n * rows);
    for (size_t i = 0; i < x.size(); ++i) big[i] = x[i] * 1e30f;
    q::linear_int8(x.data(), n, cols, qw.data(), scale.data(), rows, y.data(), isa);
    q::linear_int8(big.data(), n, cols, qw.data(), scale.data(), rows, y_big.data(), isa);
    for (int64_t i = 0; i < n * rows; ++i) ASSERT_NEAR(y_big[i] / 1e30f, y[i], 1e-4f * (1 + std::fabs(y[i])));
    // Zero weights give zero whatever the activations.
    std::vector<int8_t> zero8(w.size(), 0);
    std::vector<q::BlockQ4_0> zero4(w4.size(), q::BlockQ4_0{0, {}});
    q::linear_int8(x.data(), n, cols, zero8.data(), scale.data(), rows, y.data(), isa);
    for (float v : y) ASSERT_EQ(v, 0.0f);
    q::linear_q4_0(x.data(), n, cols, zero4.data(), rows, y.data(), isa);
    for (float v : y) ASSERT_EQ(v, 0.0f);
  }
}

// Rows are split between threads, but each output is computed the same way: bit-identical, in
// both threaded modes (n = 1, 5: every thread quantizes the activations; n = 17: they share them).
TEST(QuantKernels, ThreadCountDoesNotChangeResults) {
  const int64_t rows = 300, cols = 512;
  std::mt19937 rng(8);
  auto w = random_vector(rows * cols, rng);
  std::vector<int8_t> qw(w.size());
  std::vector<float> scale(rows);
  std::vector<q::BlockQ4_0> w4(w.size() / 32);
  q::quantize_int8(w.data(), rows, cols, qw.data(), scale.data());
  q::quantize_q4_0(w.data(), rows * cols, w4.data());
  const int saved = omp_get_max_threads();
  for (int64_t n : {1, 5, 17}) {
    auto x = random_vector(n * cols, rng);
    for (q::Isa isa : supported_isas()) {
      std::vector<float> a8(n * rows), b8(n * rows), a4(n * rows), b4(n * rows), r8(n * rows), r4(n * rows);
      omp_set_num_threads(1);
      q::linear_int8(x.data(), n, cols, qw.data(), scale.data(), rows, a8.data(), isa);
      q::linear_q4_0(x.data(), n, cols, w4.data(), rows, a4.data(), isa);
      omp_set_num_threads(3);
      q::linear_int8(x.data(), n, cols, qw.data(), scale.data(), rows, b8.data(), isa);
      q::linear_q4_0(x.data(), n, cols, w4.data(), rows, b4.data(), isa);
      EXPECT_EQ(a8, b8) << q::isa_name(isa) << " n=" << n;
      EXPECT_EQ(a4, b4) << q::isa_name(isa) << " n=" << n;
      q::linear_int8_ref(x.data(), n, cols, qw.data(), scale.data(), rows, r8.data());
      q::linear_q4_0_ref(x.data(), n, cols, w4.data(), rows, r4.data());
      for (int64_t i = 0; i < n * rows; ++i) {
        ASSERT_NEAR(b8[i], r8[i], 1e-4f * (1 + std::fabs(r8[i]))) << q::isa_name(isa) << " n=" << n;
        ASSERT_NEAR(b4[i], r4[i], 1e-4f * (1 + std::fabs(r4[i]))) << q::isa_name(isa) << " n=" << n;
      }
    }
  }
  omp_set_num_threads(saved);
}

// The team variants inside one parallel region: same bits as the self-threaded calls, and the
// second of two chained calls sees the first one's complete output (the barrier at the end).
TEST(QuantKernels, TeamVariantsSplitRowsAndWaitForEachOther) {
  const int64_t rows = 224, cols = 256;  // layer 1: [rows x cols], layer 2: [cols x rows]
  std::mt19937 rng(9);
  auto w1 = random_vector(rows * cols, rng), w2 = random_vector(cols * rows, rng);
  std::vector<int8_t> q1(w1.size()), q2(w2.size());
  std::vector<float> s1(rows), s2(cols);
  std::vector<q::BlockQ4_0> b1(w1.size() / 32), b2(w2.size() / 32);
  q::quantize_int8(w1.data(), rows, cols, q1.data(), s1.data());
  q::quantize_int8(w2.data(), cols, rows, q2.data(), s2.data());
  q::quantize_q4_0(w1.data(), rows * cols, b1.data());
  q::quantize_q4_0(w2.data(), cols * rows, b2.data());
  for (int64_t n : {1, 3}) {
    auto x = random_vector(n * cols, rng);
    for (q::Isa isa : supported_isas()) {
      std::vector<float> h8(n * rows), e8(n * cols), h4(n * rows), e4(n * cols);  // expected
      q::linear_int8(x.data(), n, cols, q1.data(), s1.data(), rows, h8.data(), isa);
      q::linear_int8(h8.data(), n, rows, q2.data(), s2.data(), cols, e8.data(), isa);
      q::linear_q4_0(x.data(), n, cols, b1.data(), rows, h4.data(), isa);
      q::linear_q4_0(h4.data(), n, rows, b2.data(), cols, e4.data(), isa);
      std::vector<float> g8(n * rows), y8(n * cols), g4(n * rows), y4(n * cols);
#pragma omp parallel num_threads(3)
      {
        q::linear_int8_team(x.data(), n, cols, q1.data(), s1.data(), rows, g8.data(), isa);
        q::linear_int8_team(g8.data(), n, rows, q2.data(), s2.data(), cols, y8.data(), isa);
        q::linear_q4_0_team(x.data(), n, cols, b1.data(), rows, g4.data(), isa);
        q::linear_q4_0_team(g4.data(), n, rows, b2.data(), cols, y4.data(), isa);
      }
      EXPECT_EQ(y8, e8) << q::isa_name(isa) << " n=" << n;
      EXPECT_EQ(y4, e4) << q::isa_name(isa) << " n=" << n;
      std::vector<float> alone(n * rows);  // outside a parallel region: the calling thread alone
      q::linear_q4_0_team(x.data(), n, cols, b1.data(), rows, alone.data(), isa);
      EXPECT_EQ(alone, h4) << q::isa_name(isa) << " n=" << n;
    }
  }
}
