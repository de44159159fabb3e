// Weight quantization of a model's linear layers:
//   int8: per-row symmetric (CTranslate2): W[r, c] = scale[r] * q[r, c], scale = max|W[r, :]| / 127.
//   q4_0: 4-bit groups of 32 along each row, llama.cpp's Q4_0 block (an fp16 scale d and 16 bytes
//         of nibbles, x = d * (q - 8)), by round-to-nearest (RTN) or by GPTQ (Frantar et al. 2022),
//         which quantizes one column at a time and spreads each column's error over the columns not
//         yet quantized, weighted by the inverse Hessian of calibration inputs.
// Quantized checkpoints stay safetensors: a quantized weight "<name>" is stored as "<name>.q8"
// (I8 [rows, cols]) with "<name>.scale" (F32 [rows]), or as "<name>.q4_0" (U8 [rows, cols / 32 * 18],
// the raw blocks). Everything else (embeddings, norms, biases) stays as it was.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "loom/io/safetensors.h"

namespace loom {

enum class QuantFormat { kInt8, kQ4_0 };
const char* format_name(QuantFormat format);  // "int8", "q4_0"

struct QuantizedLinear {
  QuantFormat format = QuantFormat::kInt8;
  int64_t rows = 0, cols = 0;
  torch::Tensor q;      // int8: kChar [rows, cols]; q4_0: kByte [rows, cols / 32 * 18]
  torch::Tensor scale;  // int8: kFloat [rows]; q4_0: undefined (the scales are in the blocks)
};

// Round to nearest. w: [rows, cols] float (q4_0: cols % 32 == 0).
QuantizedLinear quantize_rtn(const torch::Tensor& w, QuantFormat format);
// -> [rows, cols] float.
torch::Tensor dequantize(const QuantizedLinear& q);

struct GptqOptions {
  int64_t block_size = 128;  // columns whose updates are applied lazily together
  double damp = 0.01;        // added to H's diagonal, as a fraction of its mean
};
// GPTQ to q4_0. hessian: [cols, cols], sum over calibration inputs x of x x^T (any positive scale).
QuantizedLinear quantize_gptq(const torch::Tensor& w, const torch::Tensor& hessian, const GptqOptions& options = {});

// Calibration-weighted error of a quantization: trace((W - Q) H (W - Q)^T) = sum over inputs x of
// |W x - Q x|^2 for H = sum x x^T. GPTQ minimizes it column by column.
double output_error(const torch::Tensor& w, const QuantizedLinear& q, const torch::Tensor& hessian);

// Whether `format` can store this weight: a matrix [rows, cols] (q4_0: cols a multiple of 32).
// Which weights a checkpoint quantizes is the model's to say (ModelImpl::is_quantizable: the
// weights their blocks declare kQuantizable).
bool fits_format(const torch::Tensor& weight, QuantFormat format);

// Checkpoint tensors <-> quantized weights.
void append_quantized(NamedTensors& tensors, const std::string& name, const QuantizedLinear& q);
// Replaces every stored quantized weight of `tensors` by its dequantized float tensor (in place,
// at the position of its first part) and returns the quantized weights by name. Incomplete or
// inconsistent parts are a loom::Error naming `path`.
std::map<std::string, QuantizedLinear> extract_quantized(NamedTensors& tensors, const std::string& path);

}  // namespace loom
