// Quantized linear kernels (see kernels.h for the formats and the arithmetic contract).
//
// Layout of the work: the activation rows are quantized into a scratch buffer (int8 + one fp32
// scale per 32-block, plus the per-path lane arrays below), then OpenMP splits the output rows
// into contiguous chunks; each thread walks its rows R at a time (R weight rows share every
// activation load) and the activations A at a time (A activations share every weight unpack).
//
// The integer trick of the AVX-512 paths and of AVX2's Q4_0: vpdpbusd / vpmaddubsw multiply an
// unsigned byte by a signed byte. The weights are made unsigned by an offset (int8 w + 128 by
// flipping the sign bit; Q4_0's nibbles q are already 0..15 with the offset 8 built in) and the
// activations stay signed; the offset's contribution, -128 * xq or -8 * xq summed over the four
// bytes of each int32 lane, depends on the activation only, so it is computed once per call
// ("lane_corr") and used as the accumulator's initial value (AVX2: added once per block): the
// lane sums come out exact at no cost in the loop. (AVX2's int8 path can't use it: 255 * 127 * 2
// overflows vpmaddubsw's int16 pairs; it moves the weights' sign onto the activations instead.)
#include "loom/quant/kernels.h"

// GCC 12's AVX-512 intrinsic headers build their "undefined" vectors by self-initialization,
// which -Wall reports at every use; the warnings say nothing about this file.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <omp.h>

// The vector paths are x86-64 only; elsewhere (or with LOOM_QUANT_PORTABLE_ONLY, which tests that
// build) every call takes the portable path.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LOOM_QUANT_PORTABLE_ONLY)
#define LOOM_QUANT_X86 1
#include <immintrin.h>
#else
#define LOOM_QUANT_X86 0
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace loom::quant {

// ---- quantizers --------------------------------------------------------------------------------

namespace {

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("loom::quant: ") + what);
}

}  // namespace

void quantize_int8(const float* w, int64_t rows, int64_t cols, int8_t* q, float* scale) {
  check(rows >= 0 && cols >= 1, "quantize_int8 needs rows >= 0 and cols >= 1");
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(wr[c]));
    const float s = amax / 127.0f;
    scale[r] = s;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = s != 0.0f ? std::round(wr[c] / s) : 0.0f;
      q[r * cols + c] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
    }
  }
}

void dequantize_int8(const int8_t* q, const float* scale, int64_t rows, int64_t cols, float* w) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = scale[r] * q[r * cols + c];
  }
}

// ---- ISA selection -----------------------------------------------------------------------------

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
    case Isa::kPortable: return true;
#if LOOM_QUANT_X86
    case Isa::kAvx2:
      __builtin_cpu_init();  // idempotent; needed if this runs before libgcc's own constructor
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::kAvx512:
      __builtin_cpu_init();
      // libgcc also checks that the OS saves the zmm state (XCR0) before reporting avx512*.
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("avx512vbmi");
#else
    default: return false;
#endif
  }
  return false;
}

Isa best_isa() {
  static const Isa best = isa_supported(Isa::kAvx512) ? Isa::kAvx512
                          : isa_supported(Isa::kAvx2) ? Isa::kAvx2
                                                      : Isa::kPortable;
  return best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAuto: return "auto";
    case Isa::kPortable: return "portable";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "?";
}

#if LOOM_QUANT_X86
// Each vector path is compiled for its own instruction set, whatever the project's -march.
#define LOOM_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LOOM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")))
#endif

// ---- activations -------------------------------------------------------------------------------

namespace {

// One activation row in the scratch buffer. cols is padded to cols_p, a multiple of 128 (four
// blocks: the AVX-512 Q4_0 loop's step), with zeros, so no vector loop needs a tail for x.
//   xq[cols_p]          int8, natural order                     (all paths)
//   xs[cols_p / 32]     fp32 block scales                       (all paths)
//   xsplit[cols_p]      int8, per four blocks: the 4 x 16 first halves, then the 4 x 16 second
//                       halves (the order in which AVX-512 unpacks Q4_0 nibbles)
//   lane_scale[cols_p/4], lane_corr[cols_p/4]: per int32 lane (4 bytes) of the path's order, the
//                       block scale and the offset correction (see the top of the file)
struct ActRow {
  int8_t* xq;
  float* xs;
  int8_t* xsplit;
  float* lane_scale;
  int32_t* lane_corr;
};

struct ActBuffer {
  int64_t cols_p = 0, stride = 0;
  uint8_t* base = nullptr;

  ActRow row(int64_t i) const {
    uint8_t* p = base + i * stride;
    ActRow a;
    a.xq = reinterpret_cast<int8_t*>(p);
    a.xsplit = reinterpret_cast<int8_t*>(p + cols_p);
    a.lane_scale = reinterpret_cast<float*>(p + 2 * cols_p);
    a.lane_corr = reinterpret_cast<int32_t*>(p + 3 * cols_p);
    a.xs = reinterpret_cast<float*>(p + 4 * cols_p);
    return a;
  }
};

// This thread's scratch, grown (never shrunk) to the largest call. Either each OpenMP thread
// fills its own, or the workers fill the calling thread's (see drive); concurrent callers on
// different threads never share one.
ActBuffer activation_buffer(int64_t n, int64_t cols) {
  thread_local std::vector<uint8_t> storage;
  ActBuffer buf;
  buf.cols_p = (cols + 127) / 128 * 128;
  buf.stride = 4 * buf.cols_p + (buf.cols_p / 32 * 4 + 63) / 64 * 64;
  const size_t need = static_cast<size_t>(n * buf.stride + 64);
  if (storage.size() < need) storage.resize(need);
  const auto addr = reinterpret_cast<uintptr_t>(storage.data());
  buf.base = storage.data() + ((64 - addr % 64) % 64);  // 64-byte aligned rows
  return buf;
}

// The activation quantization of the reference and the AVX2/portable paths (prep_avx512 computes
// the same bits): xs = max|x| / 127 per 32-block, xq = x * (1 / xs) rounded to nearest even.
constexpr float kTinyActivation = 1e-30f;

// Round to nearest, ties to even, for |v| < 2^22, as vcvtps2dq does under the default rounding
// mode: adding 1.5 * 2^23 leaves no fraction bits. (std::nearbyint is a libm call here, 10x
// slower.) Needs IEEE semantics: -ffast-math would fold the expression to v.
float round_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

void quantize_activation(const float* x, int64_t cols, int64_t cols_p, int8_t* xq, float* xs) {
  for (int64_t b = 0; b < cols_p / kQ4Block; ++b) {
    const int64_t c0 = b * kQ4Block, c1 = std::min(cols, c0 + kQ4Block);
    float amax = 0.0f;
    for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[c]));
    // Below kTinyActivation, 1 / d would overflow to inf (d subnormal): such a block counts as
    // zero, an absolute error under 1e-30 * sum |w|.
    const float d = amax >= kTinyActivation ? amax / 127.0f : 0.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    xs[b] = d;
    // |x * id| <= 127 * (1 + 2^-22): it rounds to at most 127, the clamp is only a guard.
    for (int64_t c = c0; c < c1; ++c) xq[c] = static_cast<int8_t>(std::clamp(round_even(x[c] * id), -127.0f, 127.0f));
    for (int64_t c = c1; c < c0 + kQ4Block; ++c) xq[c] = 0;
  }
}

#if LOOM_QUANT_X86
// The AVX2 Q4_0 loop's offset correction, natural order: lane l (4 bytes) gets -8 * sum of its xq.
void q4_natural_corr(const ActRow& a, int64_t cols_p) {
  for (int64_t l = 0; l < cols_p / 4; ++l) {
    const int8_t* q = a.xq + 4 * l;
    a.lane_corr[l] = -8 * (q[0] + q[1] + q[2] + q[3]);
  }
}

// quantize_activation in AVX-512, bit-identical to it (the same max, the same scalar d and 1 / d,
// one multiply per value, the same rounding: vcvtps2dq, ties to even), then the lane arrays.
// int8 (split = false), natural order: lane l gets block l / 8's scale and -128 times the sum of
// its 4 xq. Q4_0 (split = true): xsplit, where lane l of each four-block group holds block l / 4,
// bytes 4 * (l % 4) .. + 3 of both halves, its corr being -8 times the sum of those 8 values.
LOOM_AVX512 void prep_avx512(const float* x, int64_t cols, const ActRow& a, int64_t cols_p, bool split) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t b = 0; b < cols_p / kQ4Block; ++b) {
    const int64_t c0 = b * kQ4Block, left = cols - c0;
    const __mmask16 m0 = left >= 16 ? 0xffff : left > 0 ? (1u << left) - 1 : 0;
    const __mmask16 m1 = left >= 32 ? 0xffff : left > 16 ? (1u << (left - 16)) - 1 : 0;
    const __m512 v0 = _mm512_maskz_loadu_ps(m0, x + c0), v1 = _mm512_maskz_loadu_ps(m1, x + c0 + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float d = amax >= kTinyActivation ? amax / 127.0f : 0.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    a.xs[b] = d;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    const __m512i q0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, vid)), lo), hi);
    const __m512i q1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, vid)), lo), hi);
    _mm_store_si128(reinterpret_cast<__m128i*>(a.xq + c0), _mm512_cvtepi32_epi8(q0));
    _mm_store_si128(reinterpret_cast<__m128i*>(a.xq + c0 + 16), _mm512_cvtepi32_epi8(q1));
  }
  if (!split) {
    for (int64_t c = 0; c < cols_p; c += 64) {  // lane l: block l / 8; corr = -128 * sum4(xq)
      const __m512i xq = _mm512_load_si512(a.xq + c);
      const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, xq);
      _mm512_store_si512(a.lane_corr + c / 4, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-128)));
      _mm512_store_ps(a.lane_scale + c / 4,
                      _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(a.xs[c / 32]), _mm512_set1_ps(a.xs[c / 32 + 1])));
    }
    return;
  }
  alignas(64) int8_t lo_index[64], hi_index[64];
  alignas(64) int32_t scale_index[16];
  for (int p = 0; p < 64; ++p) {
    lo_index[p] = static_cast<int8_t>(32 * (p / 16) + p % 16);  // >= 64: the second table
    hi_index[p] = static_cast<int8_t>(32 * (p / 16) + 16 + p % 16);
  }
  for (int l = 0; l < 16; ++l) scale_index[l] = l / 4;
  const __m512i lo_idx = _mm512_load_si512(lo_index), hi_idx = _mm512_load_si512(hi_index);
  const __m512i scale_idx = _mm512_load_si512(scale_index);
  for (int64_t g = 0; g < cols_p / 128; ++g) {
    const __m512i z0 = _mm512_load_si512(a.xq + g * 128), z1 = _mm512_load_si512(a.xq + g * 128 + 64);
    const __m512i xlo = _mm512_permutex2var_epi8(z0, lo_idx, z1), xhi = _mm512_permutex2var_epi8(z0, hi_idx, z1);
    _mm512_store_si512(a.xsplit + g * 128, xlo);
    _mm512_store_si512(a.xsplit + g * 128 + 64, xhi);
    const __m512i sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, xlo), ones, xhi);
    _mm512_store_si512(a.lane_corr + g * 16, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-8)));
    _mm512_store_ps(a.lane_scale + g * 16,
                    _mm512_permutexvar_ps(scale_idx, _mm512_castps128_ps512(_mm_loadu_ps(a.xs + g * 4))));
  }
}
#endif  // LOOM_QUANT_X86

// ---- scalar (reference arithmetic) -------------------------------------------------------------

float dot_int8_scalar(const ActRow& a, const int8_t* w, int64_t cols) {
  float acc = 0.0f;
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += kQ4Block, ++b) {
    int32_t s = 0;
    for (int64_t c = c0; c < std::min(cols, c0 + kQ4Block); ++c) s += w[c] * a.xq[c];
    acc += a.xs[b] * static_cast<float>(s);
  }
  return acc;
}

float dot_q4_0_scalar(const ActRow& a, const BlockQ4_0* w, int64_t cols) {
  float acc = 0.0f;
  for (int64_t b = 0; b < cols / kQ4Block; ++b) {
    const int8_t* xq = a.xq + b * kQ4Block;
    int32_t s = 0;
    for (int j = 0; j < 16; ++j) {
      s += ((w[b].qs[j] & 0x0f) - 8) * xq[j] + ((w[b].qs[j] >> 4) - 8) * xq[j + 16];
    }
    acc += (fp16_to_fp32(w[b].d) * a.xs[b]) * static_cast<float>(s);
  }
  return acc;
}

// ---- the shared driver -------------------------------------------------------------------------

struct Problem {
  const float* x;
  int64_t n, cols, rows;
  const void* w;
  const float* scale;  // int8 only
  float* y;
  ActBuffer act;
};

// A micro-kernel computes y for rows [r0, r0 + R) and activations [i0, i0 + A).
using MicroKernel = void (*)(const Problem&, int64_t r0, int64_t i0);
constexpr int kMaxR = 4, kMaxA = 4;
using KernelTable = MicroKernel[kMaxR][kMaxA];  // [R - 1][A - 1]

template <template <int, int> class K>
struct Table {
  template <int R, int A>
  static void run(const Problem& p, int64_t r0, int64_t i0) {
    K<R, A>::run(p, r0, i0);
  }
  static constexpr KernelTable table = {
      {run<1, 1>, run<1, 2>, run<1, 3>, run<1, 4>},
      {run<2, 1>, run<2, 2>, run<2, 3>, run<2, 4>},
      {run<3, 1>, run<3, 2>, run<3, 3>, run<3, 4>},
      {run<4, 1>, run<4, 2>, run<4, 3>, run<4, 4>},
  };
};

// Quantizes the activations (prep(p, i) for each row i), then runs the micro-kernels over all
// rows. Rows go to threads in contiguous chunks of kRowChunk; a chunk's weights (8 to 24 KB at
// cols 512 to 1536 in int8) stay in L1 while all n activations pass over them once.
template <class Prep>
void drive(Problem& p, Prep prep, const KernelTable& table, bool team) {
  constexpr int64_t kRowChunk = 16;
  const int64_t chunks = (p.rows + kRowChunk - 1) / kRowChunk;
  auto run_chunk = [&table](const Problem& p, int64_t chunk) {
    const int64_t r_end = std::min(p.rows, (chunk + 1) * kRowChunk);
    for (int64_t i0 = 0; i0 < p.n; i0 += kMaxA) {
      const int A = static_cast<int>(std::min<int64_t>(kMaxA, p.n - i0));
      for (int64_t r0 = chunk * kRowChunk; r0 < r_end; r0 += kMaxR) {
        table[std::min<int64_t>(kMaxR, r_end - r0) - 1][A - 1](p, r0, i0);
      }
    }
  };
  if (team) {  // see linear_int8_team: every thread of the enclosing region is here
    Problem mine = p;
    mine.act = activation_buffer(p.n, p.cols);
    for (int64_t i = 0; i < p.n; ++i) prep(mine, i);
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) run_chunk(mine, chunk);
    return;  // after the omp for's barrier: y is complete
  }
  // Below ~64K multiply-adds the fork/join costs more than a second thread saves. A serial call
  // stays out of OpenMP entirely: even a one-thread parallel region costs libgomp a team
  // allocation and futex calls, a microsecond per call.
  const bool parallel = p.n * p.rows * p.cols >= (int64_t{1} << 16) && chunks > 1 && omp_get_max_threads() > 1 &&
                        !omp_in_parallel();  // nested: the caller already splits the work
  if (!parallel) {
    p.act = activation_buffer(p.n, p.cols);
    for (int64_t i = 0; i < p.n; ++i) prep(p, i);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) run_chunk(p, chunk);
    return;
  }
  // Few activations (decoding): every thread quantizes them all into its own buffer, which costs
  // less than the barrier that sharing one buffer needs, and leaves only the join to wait on.
  if (p.n * p.cols <= 4096) {
#pragma omp parallel
    {
      Problem mine = p;
      mine.act = activation_buffer(p.n, p.cols);
      for (int64_t i = 0; i < p.n; ++i) prep(mine, i);
#pragma omp for schedule(static) nowait
      for (int64_t chunk = 0; chunk < chunks; ++chunk) run_chunk(mine, chunk);
    }
    return;
  }
  p.act = activation_buffer(p.n, p.cols);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < p.n; ++i) prep(p, i);
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) run_chunk(p, chunk);
  }
}

template <int R, int A>
struct Int8Portable {
  static void run(const Problem& p, int64_t r0, int64_t i0) {
    const auto* w = static_cast<const int8_t*>(p.w);
    for (int a = 0; a < A; ++a) {
      const ActRow x = p.act.row(i0 + a);
      for (int r = 0; r < R; ++r) {
        p.y[(i0 + a) * p.rows + r0 + r] = p.scale[r0 + r] * dot_int8_scalar(x, w + (r0 + r) * p.cols, p.cols);
      }
    }
  }
};

template <int R, int A>
struct Q4Portable {
  static void run(const Problem& p, int64_t r0, int64_t i0) {
    const auto* w = static_cast<const BlockQ4_0*>(p.w);
    const int64_t nb = p.cols / kQ4Block;
    for (int a = 0; a < A; ++a) {
      const ActRow x = p.act.row(i0 + a);
      for (int r = 0; r < R; ++r) p.y[(i0 + a) * p.rows + r0 + r] = dot_q4_0_scalar(x, w + (r0 + r) * nb, p.cols);
    }
  }
};

#if LOOM_QUANT_X86
// R and A are at most 4: the loops over them must unroll fully so that the accumulator arrays
// live in registers (at -O2 GCC would otherwise keep them on the stack).
#define LOOM_UNROLL _Pragma("GCC unroll 4")

// ---- AVX2 --------------------------------------------------------------------------------------

LOOM_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// int8 x int8 with vpmaddubsw (unsigned x signed bytes): |w| against x carrying w's sign, so the
// pair sums stay below 2 * 128 * 127 < 2^15 (no saturation) and w = -128 works.
template <int R, int A>
struct Int8Avx2 {
  LOOM_AVX2 static void run(const Problem& p, int64_t r0, int64_t i0) {
    const auto* w = static_cast<const int8_t*>(p.w) + r0 * p.cols;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[R][A];
    LOOM_UNROLL
    for (int r = 0; r < R; ++r) LOOM_UNROLL
    for (int a = 0; a < A; ++a) acc[r][a] = _mm256_setzero_ps();
    ActRow x[A];
    LOOM_UNROLL
    for (int a = 0; a < A; ++a) x[a] = p.act.row(i0 + a);
    const int64_t full = p.cols / 32 * 32;
    auto step = [&](const __m256i(&wv)[R], int64_t c) LOOM_AVX2 {
      __m256i aw[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) aw[r] = _mm256_abs_epi8(wv[r]);
      LOOM_UNROLL
      for (int a = 0; a < A; ++a) {
        const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(x[a].xq + c));
        const __m256 s = _mm256_set1_ps(x[a].xs[c / 32]);
        LOOM_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i prod = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(xv, wv[r])), ones);
          acc[r][a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), s, acc[r][a]);
        }
      }
    };
    for (int64_t c = 0; c < full; c += 32) {
      __m256i wv[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * p.cols + c));
      step(wv, c);
    }
    if (full < p.cols) {  // the row's last partial block, zero-padded (xq is zero there too)
      alignas(32) int8_t tail[R][32] = {};
      __m256i wv[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) {
        std::memcpy(tail[r], w + r * p.cols + full, static_cast<size_t>(p.cols - full));
        wv[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail[r]));
      }
      step(wv, full);
    }
    LOOM_UNROLL
    for (int a = 0; a < A; ++a) LOOM_UNROLL
    for (int r = 0; r < R; ++r) p.y[(i0 + a) * p.rows + r0 + r] = p.scale[r0 + r] * hsum256(acc[r][a]);
  }
};

// Q4_0: a block's 16 bytes become [low nibbles, high nibbles] = its 32 weights in order, offset by
// 8; lane_corr (natural order, -8 * sum of 4 xq) removes the offset exactly.
template <int R, int A>
struct Q4Avx2 {
  LOOM_AVX2 static void run(const Problem& p, int64_t r0, int64_t i0) {
    const int64_t nb = p.cols / kQ4Block;
    const auto* w = static_cast<const BlockQ4_0*>(p.w) + r0 * nb;
    const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0f);
    __m256 acc[R][A];
    LOOM_UNROLL
    for (int r = 0; r < R; ++r) LOOM_UNROLL
    for (int a = 0; a < A; ++a) acc[r][a] = _mm256_setzero_ps();
    ActRow x[A];
    LOOM_UNROLL
    for (int a = 0; a < A; ++a) x[a] = p.act.row(i0 + a);
    for (int64_t b = 0; b < nb; ++b) {
      __m256i q[R];
      float d[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) {
        const BlockQ4_0& blk = w[r * nb + b];
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs));
        q[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low4);
        d[r] = _cvtsh_ss(blk.d);
      }
      LOOM_UNROLL
      for (int a = 0; a < A; ++a) {
        const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(x[a].xq + b * 32));
        const __m256i corr = _mm256_load_si256(reinterpret_cast<const __m256i*>(x[a].lane_corr + b * 8));
        const float xs = x[a].xs[b];
        LOOM_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i prod = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(q[r], xv), ones), corr);
          acc[r][a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(d[r] * xs), acc[r][a]);
        }
      }
    }
    LOOM_UNROLL
    for (int a = 0; a < A; ++a) LOOM_UNROLL
    for (int r = 0; r < R; ++r) p.y[(i0 + a) * p.rows + r0 + r] = hsum256(acc[r][a]);
  }
};

// ---- AVX-512 (VNNI + VBMI) ---------------------------------------------------------------------

// Decoding (one activation row) streams the weights from DRAM, and every matrix is a new stream
// that the hardware prefetcher has to pick up again; a software prefetch into L2 (the T1 hint) of
// the same bytes this many rows ahead helps. A/B runs alternated on this noisy machine (bench
// model, 2 threads): int8 decode 545 -> 692 tok/s (means of 4 pairs) with T0 prefetches 16 rows
// ahead, then 920 -> 1,311 from T0 to T1; Q4_0 1,133 -> 1,395 with T0 32 rows ahead, T1 the same
// as T0. Past a matrix's end it fetches the next one's first rows (the fast engine keeps them
// consecutive) or nothing: prefetches never fault.
constexpr int64_t kInt8PrefetchRows = 16, kQ4PrefetchRows = 32;

// int8: 64 weights (two blocks) per vpdpbusd; w + 128 (sign bit flipped) times xq, started from
// lane_corr = -128 * xq summed per lane, gives sum w * xq exactly per lane.
template <int R, int A>
struct Int8Avx512 {
  LOOM_AVX512 static void run(const Problem& p, int64_t r0, int64_t i0) {
    const auto* w = static_cast<const int8_t*>(p.w) + r0 * p.cols;
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512 acc[R][A];
    LOOM_UNROLL
    for (int r = 0; r < R; ++r) LOOM_UNROLL
    for (int a = 0; a < A; ++a) acc[r][a] = _mm512_setzero_ps();
    ActRow x[A];
    LOOM_UNROLL
    for (int a = 0; a < A; ++a) x[a] = p.act.row(i0 + a);
    auto step = [&](const __m512i(&wu)[R], int64_t c) LOOM_AVX512 {
      LOOM_UNROLL
      for (int a = 0; a < A; ++a) {
        const __m512i xv = _mm512_load_si512(x[a].xq + c);
        const __m512i corr = _mm512_load_si512(x[a].lane_corr + c / 4);
        const __m512 s = _mm512_load_ps(x[a].lane_scale + c / 4);
        LOOM_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m512i prod = _mm512_dpbusd_epi32(corr, wu[r], xv);
          acc[r][a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(prod), s, acc[r][a]);
        }
      }
    };
    const int64_t full = p.cols / 64 * 64;
    for (int64_t c = 0; c < full; c += 64) {
      __m512i wu[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) wu[r] = _mm512_xor_si512(_mm512_loadu_si512(w + r * p.cols + c), flip);
      if (A == 1) LOOM_UNROLL
      for (int r = 0; r < R; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(w + (r + kInt8PrefetchRows) * p.cols + c), _MM_HINT_T1);
      step(wu, c);
    }
    if (full < p.cols) {  // masked-off bytes load as 0 (+128 after the flip) against xq = 0
      const __mmask64 m = (~uint64_t{0}) >> (64 - (p.cols - full));
      __m512i wu[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) wu[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + r * p.cols + full), flip);
      step(wu, full);
    }
    LOOM_UNROLL
    for (int a = 0; a < A; ++a) LOOM_UNROLL
    for (int r = 0; r < R; ++r) p.y[(i0 + a) * p.rows + r0 + r] = p.scale[r0 + r] * _mm512_reduce_add_ps(acc[r][a]);
  }
};

// Q4_0: four blocks (72 bytes) per step. vpermt2b gathers their 64 nibble bytes out of the 18-byte
// blocks; the low and high nibbles then meet xsplit's first and second halves, lane l of both
// belonging to block l / 4, and vpermb + vcvtph2ps spread each block's d over its four lanes.
template <int R, int A>
struct Q4Avx512 {
  LOOM_AVX512 static __m512i gather_qs_index() {
    alignas(64) int8_t idx[64];
    for (int i = 0; i < 64; ++i) idx[i] = static_cast<int8_t>(18 * (i / 16) + 2 + i % 16);  // >= 64: 2nd table
    return _mm512_load_si512(idx);
  }
  LOOM_AVX512 static __m512i gather_d_index() {
    alignas(64) int8_t idx[64] = {};
    for (int i = 0; i < 32; ++i) idx[i] = static_cast<int8_t>(18 * (i / 8) + i % 2);  // fp16 word i -> block i / 4
    return _mm512_load_si512(idx);
  }
  LOOM_AVX512 static void run(const Problem& p, int64_t r0, int64_t i0) {
    const int64_t nb = p.cols / kQ4Block;
    const auto* w = reinterpret_cast<const uint8_t*>(static_cast<const BlockQ4_0*>(p.w) + r0 * nb);
    const int64_t row_bytes = nb * static_cast<int64_t>(sizeof(BlockQ4_0));
    static const __m512i qs_index = gather_qs_index(), d_index = gather_d_index();
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    __m512 acc[R][A];
    LOOM_UNROLL
    for (int r = 0; r < R; ++r) LOOM_UNROLL
    for (int a = 0; a < A; ++a) acc[r][a] = _mm512_setzero_ps();
    ActRow x[A];
    LOOM_UNROLL
    for (int a = 0; a < A; ++a) x[a] = p.act.row(i0 + a);
    auto step = [&](const __m512i(&head)[R], const __m512i(&rest)[R], int64_t g) LOOM_AVX512 {
      __m512i lo[R], hi[R];
      __m512 d[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512i qs = _mm512_permutex2var_epi8(head[r], qs_index, rest[r]);
        lo[r] = _mm512_and_si512(qs, low4);
        hi[r] = _mm512_and_si512(_mm512_srli_epi16(qs, 4), low4);
        d[r] = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi8(d_index, head[r])));
      }
      LOOM_UNROLL
      for (int a = 0; a < A; ++a) {
        const __m512i xlo = _mm512_load_si512(x[a].xsplit + g * 128);
        const __m512i xhi = _mm512_load_si512(x[a].xsplit + g * 128 + 64);
        const __m512i corr = _mm512_load_si512(x[a].lane_corr + g * 16);
        const __m512 s = _mm512_load_ps(x[a].lane_scale + g * 16);
        LOOM_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m512i prod = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(corr, lo[r], xlo), hi[r], xhi);
          acc[r][a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(prod), _mm512_mul_ps(d[r], s), acc[r][a]);
        }
      }
    };
    const int64_t groups = nb / 4;
    for (int64_t g = 0; g < groups; ++g) {
      __m512i head[R], rest[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) {
        const uint8_t* src = w + r * row_bytes + g * 72;
        head[r] = _mm512_loadu_si512(src);
        rest[r] = _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 64)));
        if (A == 1) {
          _mm_prefetch(reinterpret_cast<const char*>(src + kQ4PrefetchRows * row_bytes), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(src + kQ4PrefetchRows * row_bytes + 71), _MM_HINT_T1);
        }
      }
      step(head, rest, g);
    }
    if (groups * 4 < nb) {  // 1 to 3 blocks left: masked-off bytes are 0 (d = 0, nibbles 0, xq 0)
      const __mmask64 m = (~uint64_t{0}) >> (64 - 18 * (nb - groups * 4));
      __m512i head[R], rest[R];
      LOOM_UNROLL
      for (int r = 0; r < R; ++r) {
        head[r] = _mm512_maskz_loadu_epi8(m, w + r * row_bytes + groups * 72);
        rest[r] = _mm512_setzero_si512();
      }
      step(head, rest, groups);
    }
    LOOM_UNROLL
    for (int a = 0; a < A; ++a) LOOM_UNROLL
    for (int r = 0; r < R; ++r) p.y[(i0 + a) * p.rows + r0 + r] = _mm512_reduce_add_ps(acc[r][a]);
  }
};
#endif  // LOOM_QUANT_X86

Isa resolve(Isa isa) {
  if (isa == Isa::kAuto) return best_isa();
  if (!isa_supported(isa)) throw std::invalid_argument(std::string("loom::quant: this CPU lacks ") + isa_name(isa));
  return isa;
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------

namespace {

void int8_impl(const float* x, int64_t n, int64_t cols, const int8_t* w, const float* scale, int64_t rows, float* y,
               Isa isa, bool team) {
  check(n >= 0 && rows >= 0 && cols >= 1, "linear_int8 needs n >= 0, rows >= 0, cols >= 1");
  if (n == 0 || rows == 0) return;
  Problem p{x, n, cols, rows, w, scale, y, ActBuffer{}};
  isa = resolve(isa);
#if LOOM_QUANT_X86
  if (isa == Isa::kAvx512) {
    auto prep = [](const Problem& p, int64_t i) {
      prep_avx512(p.x + i * p.cols, p.cols, p.act.row(i), p.act.cols_p, false);
    };
    return drive(p, prep, Table<Int8Avx512>::table, team);
  }
#endif
  auto prep = [](const Problem& p, int64_t i) {
    const ActRow a = p.act.row(i);
    quantize_activation(p.x + i * p.cols, p.cols, p.act.cols_p, a.xq, a.xs);
  };
#if LOOM_QUANT_X86
  if (isa == Isa::kAvx2) return drive(p, prep, Table<Int8Avx2>::table, team);
#endif
  drive(p, prep, Table<Int8Portable>::table, team);
}

void q4_0_impl(const float* x, int64_t n, int64_t cols, const BlockQ4_0* w, int64_t rows, float* y, Isa isa,
               bool team) {
  check(n >= 0 && rows >= 0 && cols >= 1 && cols % kQ4Block == 0,
        "linear_q4_0 needs n >= 0, rows >= 0 and cols a positive multiple of 32");
  if (n == 0 || rows == 0) return;
  Problem p{x, n, cols, rows, w, nullptr, y, ActBuffer{}};
  isa = resolve(isa);
#if LOOM_QUANT_X86
  if (isa == Isa::kAvx512) {
    auto prep = [](const Problem& p, int64_t i) {
      prep_avx512(p.x + i * p.cols, p.cols, p.act.row(i), p.act.cols_p, true);
    };
    return drive(p, prep, Table<Q4Avx512>::table, team);
  }
  if (isa == Isa::kAvx2) {
    auto prep = [](const Problem& p, int64_t i) {
      const ActRow a = p.act.row(i);
      quantize_activation(p.x + i * p.cols, p.cols, p.act.cols_p, a.xq, a.xs);
      q4_natural_corr(a, p.act.cols_p);
    };
    return drive(p, prep, Table<Q4Avx2>::table, team);
  }
#endif
  auto prep = [](const Problem& p, int64_t i) {
    const ActRow a = p.act.row(i);
    quantize_activation(p.x + i * p.cols, p.cols, p.act.cols_p, a.xq, a.xs);
  };
  drive(p, prep, Table<Q4Portable>::table, team);
}

}  // namespace

void linear_int8(const float* x, int64_t n, int64_t cols, const int8_t* w, const float* scale, int64_t rows, float* y,
                 Isa isa) {
  int8_impl(x, n, cols, w, scale, rows, y, isa, false);
}

void linear_q4_0(const float* x, int64_t n, int64_t cols, const BlockQ4_0* w, int64_t rows, float* y, Isa isa) {
  q4_0_impl(x, n, cols, w, rows, y, isa, false);
}

void linear_int8_team(const float* x, int64_t n, int64_t cols, const int8_t* w, const float* scale, int64_t rows,
                      float* y, Isa isa) {
  int8_impl(x, n, cols, w, scale, rows, y, isa, true);
}

void linear_q4_0_team(const float* x, int64_t n, int64_t cols, const BlockQ4_0* w, int64_t rows, float* y, Isa isa) {
  q4_0_impl(x, n, cols, w, rows, y, isa, true);
}

void linear_int8_ref(const float* x, int64_t n, int64_t cols, const int8_t* w, const float* scale, int64_t rows,
                     float* y) {
  check(n >= 0 && rows >= 0 && cols >= 1, "linear_int8_ref needs n >= 0, rows >= 0, cols >= 1");
  const int64_t cols_p = (cols + kQ4Block - 1) / kQ4Block * kQ4Block;
  std::vector<int8_t> xq(cols_p);
  std::vector<float> xs(cols_p / kQ4Block);
  const ActRow a{xq.data(), xs.data(), nullptr, nullptr, nullptr};
  for (int64_t i = 0; i < n; ++i) {
    quantize_activation(x + i * cols, cols, cols_p, xq.data(), xs.data());
    for (int64_t r = 0; r < rows; ++r) y[i * rows + r] = scale[r] * dot_int8_scalar(a, w + r * cols, cols);
  }
}

void linear_q4_0_ref(const float* x, int64_t n, int64_t cols, const BlockQ4_0* w, int64_t rows, float* y) {
  check(n >= 0 && rows >= 0 && cols >= 1 && cols % kQ4Block == 0,
        "linear_q4_0_ref needs n >= 0, rows >= 0 and cols a positive multiple of 32");
  std::vector<int8_t> xq(cols);
  std::vector<float> xs(cols / kQ4Block);
  const ActRow a{xq.data(), xs.data(), nullptr, nullptr, nullptr};
  for (int64_t i = 0; i < n; ++i) {
    quantize_activation(x + i * cols, cols, cols, xq.data(), xs.data());
    for (int64_t r = 0; r < rows; ++r) y[i * rows + r] = dot_q4_0_scalar(a, w + r * cols / kQ4Block, cols);
  }
}

}  // namespace loom::quant

#pragma GCC diagnostic pop
