// The fast inference engine: decoder LMs built from softmax attention (MHA/GQA/MQA, sliding window),
// RoPE (both pairings), learned, sinusoidal or no positions, pre-norm LayerNorm or RMSNorm, and
// ReLU/GELU MLPs or SwiGLU/GeGLU, with fp32, int8 or Q4_0 linear weights (quant/quantize.h).
// Everything runs as explicit loops over preallocated buffers: one call processes the new tokens of
// every slot as the rows of one batch (a prompt's tokens and other slots' single decode tokens
// alike), so each weight matrix is read once per call. Linear layers: one fp32 row through an
// OpenMP matrix-vector loop; several fp32 rows (a prompt) through CBLAS sgemm, one call per OpenMP
// thread on its share of the weight's rows, which turns OpenBLAS's own threading off for the
// process (libtorch's mm where there is no CBLAS); int8 and Q4_0 through the hand-written kernels
// of quant/kernels.h. Attention reads each slot's own cache [kv_heads, context, head_dim] per layer:
// a prompt's rows in blocks of 64 as two CBLAS GEMMs per head (scores, then scores x values) around
// a masked softmax, a lone decode row as dot-product loops. Norms, activations and softmax use the
// vector loops of infer/cpu_ops.h, split over rows among OpenMP's threads when a call has enough
// rows. Once the buffers have grown to a call's size, later calls of that size allocate nothing
// but the returned logits.
#pragma once
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "loom/infer/engine.h"
#include "loom/quant/quantize.h"

namespace loom {

// Whether the fast engine runs this architecture, computed from the declarations: every block the
// model uses registered with fast_engine(true), every option that changes the forward pass
// declared AtInference::kFastEngine or left at its default (nn/config.h). If not, `why` (when
// given) names the first block or option it lacks.
bool fast_engine_supports(const ModelConfig& config, std::string* why = nullptr);

enum class WeightFormat { kAsStored, kF32, kInt8, kQ4_0 };

struct FastEngineOptions {
  EngineOptions engine;
  // kAsStored: the checkpoint's quantized weights as they are, the rest fp32. Otherwise every
  // quantizable weight is converted (from the float weights) by round to nearest: for benchmarks.
  WeightFormat weights = WeightFormat::kAsStored;
  // Called before a layer's fp32 linear (not the output projection) first runs, with its weight
  // name, its float weight [rows, cols] and its input rows x [n, cols]; a quantized weight it
  // returns replaces the layer's weight from then on, this call included. Layers run in order, so
  // each sees inputs computed by the layers already replaced: one forward over calibration
  // sequences quantizes a model sequentially (GPTQ).
  std::function<std::optional<QuantizedLinear>(const std::string& name, const torch::Tensor& weight, const float* x,
                                               int64_t n)>
      before_linear;
};

// model: the float model (quantized checkpoints load dequantized); quantized: its stored quantized
// weights by parameter name (LoadedModel::quantized). Unsupported architectures are a loom::Error.
std::unique_ptr<Engine> make_fast_engine(Model model, const std::map<std::string, QuantizedLinear>& quantized,
                                         const FastEngineOptions& options);

}  // namespace loom
