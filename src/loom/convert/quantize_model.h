// `loom quantize`: a float checkpoint -> a quantized checkpoint (quant/quantize.h formats).
#pragma once
#include <map>
#include <string>

#include "loom/checkpoint/checkpoint.h"
#include "loom/quant/quantize.h"

namespace loom {

enum class QuantMethod { kInt8, kQ4, kGptq };
// "int8", "q4" or "gptq"; anything else is a loom::Error.
QuantMethod parse_quant_method(const std::string& name);
const char* method_name(QuantMethod method);

struct QuantizeStats {
  std::string name;
  double rtn_error = 0;   // calibration-weighted output error of round to nearest (GPTQ only)
  double gptq_error = 0;  // the same for GPTQ
};

// Quantizes every quantizable weight of a float checkpoint (int8 and q4: round to nearest; gptq:
// GPTQ to q4_0 for the layers' linears, calibrated on `calibration` [N, T] token ids and applied
// layer after layer so each layer is calibrated on the outputs of the quantized layers before it;
// an untied lm_head by round to nearest). GPTQ needs an architecture the fast engine runs.
// `stats` (optional) receives the per-weight errors of GPTQ.
std::map<std::string, QuantizedLinear> quantize_model(const LoadedModel& loaded, QuantMethod method,
                                                      const torch::Tensor& calibration, const GptqOptions& options = {},
                                                      std::vector<QuantizeStats>* stats = nullptr);

// Writes a checkpoint directory (atomically): the float checkpoint's files with model.safetensors
// holding the quantized weights in their stored form; an existing out_dir is an error (it might be
// the float checkpoint itself). Returns out_dir.
std::string save_quantized_checkpoint(const LoadedModel& loaded, const std::map<std::string, QuantizedLinear>& weights,
                                      QuantMethod method, const std::string& out_dir);

}  // namespace loom
