#include "loom/quant/quantize.h"

#include <cmath>
#include <cstring>

#include "loom/core/error.h"
#include "loom/core/shape.h"
#include "loom/quant/kernels.h"

namespace loom {
namespace {

constexpr int64_t kGroup = 32;       // weights per Q4_0 block
constexpr int64_t kBlockBytes = 18;  // fp16 d + 16 bytes of nibbles

uint16_t half_bits(float x) { return quant::fp32_to_fp16(x); }
float half_value(uint16_t bits) { return quant::fp16_to_fp32(bits); }

// GPTQ quantizes column by column, so it needs Q4_0's rounding per value (quant::quantize_q4_0
// does whole blocks). llama.cpp's rule with inverse scale id: (int8)(x * id + 8.5), at most 15;
// values below the range (only GPTQ's updated columns can be) clamp to 0.
uint8_t q4_level(float x, float id) {
  const float v = x * id + 8.5f;
  if (v < 1.0f) return 0;
  return static_cast<uint8_t>(std::min(15, static_cast<int>(v)));
}

// The group's scale by llama.cpp's rule: d = m / -8, m the value of largest magnitude (its sign
// kept), so m itself maps to level 0 and the other end of the range to +7.
float q4_scale(const float* x, int64_t stride) {
  float amax = 0, m = 0;
  for (int64_t j = 0; j < kGroup; ++j) {
    const float v = x[j * stride];
    if (std::fabs(v) > amax) amax = std::fabs(v), m = v;
  }
  return m / -8.0f;
}

void write_block(uint8_t* block, float d, const uint8_t* levels) {
  const uint16_t bits = half_bits(d);
  std::memcpy(block, &bits, 2);
  for (int j = 0; j < 16; ++j) block[2 + j] = static_cast<uint8_t>(levels[j] | (levels[j + 16] << 4));
}

void check_weight(const torch::Tensor& w, QuantFormat format) {
  if (w.dim() != 2) fail("quantize: expected a 2-D weight, got shape {}", shape_string(w.sizes()));
  if (format == QuantFormat::kQ4_0 && w.size(1) % kGroup != 0)
    fail("quantize: q4_0 needs rows of a multiple of {} weights, got {}", kGroup, w.size(1));
}

}  // namespace

const char* format_name(QuantFormat format) { return format == QuantFormat::kInt8 ? "int8" : "q4_0"; }

QuantizedLinear quantize_rtn(const torch::Tensor& weight, QuantFormat format) {
  check_weight(weight, format);
  auto w = weight.detach().to(torch::kCPU, torch::kFloat).contiguous();
  QuantizedLinear out;
  out.format = format;
  out.rows = w.size(0), out.cols = w.size(1);
  if (format == QuantFormat::kInt8) {
    out.q = torch::empty({out.rows, out.cols}, torch::kChar);
    out.scale = torch::empty({out.rows}, torch::kFloat);
    quant::quantize_int8(w.data_ptr<float>(), out.rows, out.cols, out.q.data_ptr<int8_t>(),
                         out.scale.data_ptr<float>());
    return out;
  }
  out.q = torch::empty({out.rows, out.cols / kGroup * kBlockBytes}, torch::kByte);
  quant::quantize_q4_0(w.data_ptr<float>(), w.numel(), reinterpret_cast<quant::BlockQ4_0*>(out.q.data_ptr<uint8_t>()));
  return out;
}

torch::Tensor dequantize(const QuantizedLinear& q) {
  auto out = torch::empty({q.rows, q.cols}, torch::kFloat);
  const auto data = q.q.contiguous();
  if (q.format == QuantFormat::kInt8)
    quant::dequantize_int8(data.data_ptr<int8_t>(), q.scale.contiguous().data_ptr<float>(), q.rows, q.cols,
                           out.data_ptr<float>());
  else
    quant::dequantize_q4_0(reinterpret_cast<const quant::BlockQ4_0*>(data.data_ptr<uint8_t>()), q.rows * q.cols,
                           out.data_ptr<float>());
  return out;
}

QuantizedLinear quantize_gptq(const torch::Tensor& weight, const torch::Tensor& hessian, const GptqOptions& options) {
  check_weight(weight, QuantFormat::kQ4_0);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  if (!hessian.sizes().equals({cols, cols}))
    fail("gptq: the Hessian is {} but the weight has {} columns", shape_string(hessian.sizes()), cols);
  if (options.block_size <= 0 || options.block_size % kGroup != 0)
    fail("gptq: block_size must be a positive multiple of {}, got {}", kGroup, options.block_size);
  torch::NoGradGuard no_grad;
  // Work on W^T ([cols, rows]) so that a column of W is a contiguous row here.
  auto wt = weight.detach().to(torch::kCPU, torch::kDouble).t().contiguous();
  auto h = hessian.detach().to(torch::kCPU, torch::kDouble).clone();
  // Inputs that never fire carry no information: their weights are free (set to 0).
  auto dead = h.diagonal() == 0;
  h.diagonal().index_put_({dead}, 1.0);
  wt.index_put_({dead}, 0.0);
  h.diagonal().add_(options.damp * h.diagonal().mean().item<double>());
  // U = upper Cholesky factor of H^-1: row i of U holds the error propagation of column i onto
  // the columns after it, scaled so that U[i, i] is the error's denominator.
  auto l = torch::linalg_cholesky(h);
  auto u = torch::linalg_cholesky(torch::cholesky_inverse(l)).t().contiguous();  // upper

  auto levels = torch::empty({cols, rows}, torch::kByte);  // level of each W^T element
  auto scales = torch::empty({cols / kGroup, rows}, torch::kFloat);
  auto* level = levels.data_ptr<uint8_t>();
  std::vector<float> d(rows), id(rows);
  for (int64_t b0 = 0; b0 < cols; b0 += options.block_size) {
    const int64_t b1 = std::min(cols, b0 + options.block_size);
    auto block = wt.narrow(0, b0, b1 - b0).clone();  // [n, rows]
    auto err = torch::zeros_like(block);
    auto ub = u.narrow(0, b0, b1 - b0).narrow(1, b0, b1 - b0);  // [n, n]
    for (int64_t i = 0; i < b1 - b0; ++i) {
      const int64_t c = b0 + i;
      if (c % kGroup == 0) {  // the group's scales from its current (already updated) columns
        auto group = block.narrow(0, i, kGroup).to(torch::kFloat).contiguous();  // [32, rows]
        const float* g = group.data_ptr<float>();
        for (int64_t r = 0; r < rows; ++r) {
          d[r] = q4_scale(g + r, rows);
          id[r] = d[r] != 0 ? 1.0f / d[r] : 0.0f;
          scales[c / kGroup][r] = d[r];
        }
      }
      auto col = block[i];  // [rows] double
      auto qcol = torch::empty({rows}, torch::kDouble);
      const double* x = col.data_ptr<double>();
      double* y = qcol.data_ptr<double>();
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t q = q4_level(static_cast<float>(x[r]), id[r]);
        level[c * rows + r] = q;
        y[r] = static_cast<double>(half_value(half_bits(d[r]))) * (q - 8);  // what the block stores
      }
      auto e = (col - qcol) / ub[i][i];
      // Spread the error over the block's later columns now, and over later blocks at the end.
      if (i + 1 < b1 - b0)
        block.narrow(0, i + 1, b1 - b0 - i - 1).sub_(torch::outer(ub[i].narrow(0, i + 1, b1 - b0 - i - 1), e));
      err[i] = e;
    }
    if (b1 < cols)
      wt.narrow(0, b1, cols - b1).sub_(torch::matmul(u.narrow(0, b0, b1 - b0).narrow(1, b1, cols - b1).t(), err));
  }
  // Pack: W^T levels [cols, rows] -> Q4_0 blocks along each row of W.
  QuantizedLinear out;
  out.format = QuantFormat::kQ4_0;
  out.rows = rows, out.cols = cols;
  out.q = torch::empty({rows, cols / kGroup * kBlockBytes}, torch::kByte);
  auto lt = levels.t().contiguous();  // [rows, cols]
  auto st = scales.t().contiguous();  // [rows, cols / 32]
  const uint8_t* lv = lt.data_ptr<uint8_t>();
  const float* sc = st.data_ptr<float>();
  uint8_t* dst = out.q.data_ptr<uint8_t>();
  for (int64_t b = 0; b < rows * cols / kGroup; ++b) write_block(dst + b * kBlockBytes, sc[b], lv + b * kGroup);
  return out;
}

double output_error(const torch::Tensor& w, const QuantizedLinear& q, const torch::Tensor& hessian) {
  auto delta = (w.detach().to(torch::kDouble) - dequantize(q).to(torch::kDouble));
  return (torch::matmul(delta, hessian.to(torch::kDouble)) * delta).sum().item<double>();
}

bool fits_format(const torch::Tensor& weight, QuantFormat format) {
  return weight.dim() == 2 && (format == QuantFormat::kInt8 || weight.size(1) % kGroup == 0);
}

void append_quantized(NamedTensors& tensors, const std::string& name, const QuantizedLinear& q) {
  if (q.format == QuantFormat::kInt8) {
    tensors.emplace_back(name + ".q8", q.q);
    tensors.emplace_back(name + ".scale", q.scale);
  } else {
    tensors.emplace_back(name + ".q4_0", q.q);
  }
}

std::map<std::string, QuantizedLinear> extract_quantized(NamedTensors& tensors, const std::string& path) {
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  std::map<std::string, torch::Tensor> scales;  // of int8 weights: "<base>.scale" beside "<base>.q8"
  for (const auto& [name, t] : tensors)
    if (ends_with(name, ".q8")) scales[name.substr(0, name.size() - 3)] = torch::Tensor();
  for (const auto& [name, t] : tensors)
    if (ends_with(name, ".scale") && scales.count(name.substr(0, name.size() - 6)))
      scales[name.substr(0, name.size() - 6)] = t;
  std::map<std::string, QuantizedLinear> out;
  NamedTensors kept;
  for (auto& [name, t] : tensors) {
    QuantizedLinear q;
    std::string base;
    if (ends_with(name, ".q8")) {
      base = name.substr(0, name.size() - 3);
      auto it = scales.find(base);
      if (!it->second.defined()) fail("{}: '{}' has no '{}.scale'", path, name, base);
      if (t.scalar_type() != torch::kChar || t.dim() != 2 || it->second.scalar_type() != torch::kFloat ||
          !it->second.sizes().equals({t.size(0)}))
        fail("{}: int8 weight '{}' ({} {}) and its scale ({} {}) do not fit", path, base,
             c10::toString(t.scalar_type()), shape_string(t.sizes()), c10::toString(it->second.scalar_type()),
             shape_string(it->second.sizes()));
      q.format = QuantFormat::kInt8;
      q.rows = t.size(0), q.cols = t.size(1), q.q = t, q.scale = it->second;
    } else if (ends_with(name, ".q4_0")) {
      base = name.substr(0, name.size() - 5);
      if (t.scalar_type() != torch::kByte || t.dim() != 2 || t.size(1) % kBlockBytes != 0)
        fail("{}: '{}' is not a [rows, blocks * {}] byte tensor of q4_0 blocks ({} {})", path, name, kBlockBytes,
             c10::toString(t.scalar_type()), shape_string(t.sizes()));
      q.format = QuantFormat::kQ4_0;
      q.rows = t.size(0), q.cols = t.size(1) / kBlockBytes * kGroup, q.q = t;
    } else if (ends_with(name, ".scale") && scales.count(name.substr(0, name.size() - 6))) {
      continue;  // read with its .q8
    } else {
      kept.emplace_back(name, t);
      continue;
    }
    kept.emplace_back(base, dequantize(q));
    out[base] = std::move(q);
  }
  tensors = std::move(kept);
  return out;
}

}  // namespace loom
