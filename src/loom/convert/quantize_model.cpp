#include "loom/convert/quantize_model.h"

#include <filesystem>

#include "loom/core/error.h"
#include "loom/core/shape.h"
#include "loom/infer/fast_engine.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/io/safetensors.h"

namespace loom {
namespace fs = std::filesystem;

QuantMethod parse_quant_method(const std::string& name) {
  if (name == "int8") return QuantMethod::kInt8;
  if (name == "q4") return QuantMethod::kQ4;
  if (name == "gptq") return QuantMethod::kGptq;
  fail("unknown quantization method '{}' (int8, q4 or gptq)", name);
}

const char* method_name(QuantMethod method) {
  switch (method) {
    case QuantMethod::kInt8: return "int8";
    case QuantMethod::kQ4: return "q4";
    default: return "gptq";
  }
}

std::map<std::string, QuantizedLinear> quantize_model(const LoadedModel& loaded, QuantMethod method,
                                                      const torch::Tensor& calibration, const GptqOptions& options,
                                                      std::vector<QuantizeStats>* stats) {
  if (!loaded.quantized.empty()) fail("{} is already quantized ({})", loaded.dir, loaded.quantization);
  torch::NoGradGuard no_grad;
  const QuantFormat format = method == QuantMethod::kInt8 ? QuantFormat::kInt8 : QuantFormat::kQ4_0;
  std::map<std::string, QuantizedLinear> out;
  const bool tied = loaded.model->config().tie_embeddings && loaded.model->config().arch == "decoder";
  for (const auto& p : loaded.model->named_parameters()) {
    // A tied embedding is also the output projection, the largest matrix a decode step reads:
    // it is quantized too (as llama.cpp's files do), and the input embedding reads its
    // dequantized rows.
    const bool output = tied && p.key() == "tok_emb.weight";
    if ((output || loaded.model->is_quantizable(p.key())) && fits_format(p.value(), format))
      out[p.key()] = quantize_rtn(p.value(), format);
  }
  if (method != QuantMethod::kGptq) return out;

  const auto& config = loaded.model->config();
  std::string why;
  if (!fast_engine_supports(config, &why))
    fail("gptq calibrates through the fast engine, which cannot run this model: {}", why);
  if (calibration.dim() != 2 || calibration.size(0) < 1 || calibration.size(1) < 2)
    fail("gptq needs calibration tokens [sequences, length], got shape {}", shape_string(calibration.sizes()));
  if (calibration.size(1) > config.max_seq_len)
    fail("calibration sequences of {} tokens exceed the model's context of {}", calibration.size(1),
         config.max_seq_len);
  // One forward of every calibration sequence (one slot each) through an fp32 engine whose hook
  // replaces each layer's linear by its GPTQ quantization just before it first runs.
  FastEngineOptions engine_options;
  engine_options.engine.slots = calibration.size(0);
  engine_options.engine.context = calibration.size(1);
  engine_options.weights = WeightFormat::kF32;
  engine_options.before_linear = [&](const std::string& name, const torch::Tensor& w, const float* x,
                                     int64_t n) -> std::optional<QuantizedLinear> {
    auto it = out.find(name);
    if (it == out.end()) return std::nullopt;
    auto inputs = torch::from_blob(const_cast<float*>(x), {n, w.size(1)}).to(torch::kDouble);
    auto hessian = torch::matmul(inputs.t(), inputs);
    QuantizedLinear q = quantize_gptq(w, hessian, options);
    if (stats) stats->push_back({name, output_error(w, it->second, hessian), output_error(w, q, hessian)});
    it->second = q;
    return q;
  };
  // The engine's Model shares the checkpoint's parameters; the engine only reads them.
  auto engine = make_fast_engine(loaded.model, {}, engine_options);
  std::vector<int64_t> slots;
  std::vector<std::vector<int64_t>> tokens;
  auto calib = calibration.to(torch::kLong).contiguous();
  for (int64_t i = 0; i < calib.size(0); ++i) {
    slots.push_back(i);
    tokens.emplace_back(calib[i].data_ptr<int64_t>(), calib[i].data_ptr<int64_t>() + calib.size(1));
  }
  engine->forward(slots, tokens);
  return out;
}

std::string save_quantized_checkpoint(const LoadedModel& loaded, const std::map<std::string, QuantizedLinear>& weights,
                                      QuantMethod method, const std::string& out_dir) {
  // Never replace a directory: --out naming the float checkpoint itself would lose it.
  if (fs::exists(out_dir)) fail("{} already exists; quantize writes a new checkpoint directory", out_dir);
  NamedTensors tensors;
  for (auto& [name, t] : module_state(*loaded.model)) {
    auto it = weights.find(name);
    if (it == weights.end()) tensors.emplace_back(name, t);
    else append_quantized(tensors, name, it->second);
  }
  const fs::path out(out_dir);
  CheckpointWriter writer(out.has_parent_path() ? out.parent_path().string() : ".", out.filename().string());
  save_safetensors(writer.path("model.safetensors"), tensors,
                   {{"format", "loom-" + std::to_string(kCheckpointFormat)},
                    {"step", std::to_string(loaded.state.step)},
                    {"quantization", method_name(method)}});
  // Every other file (recipe, trainer state, whichever tokenizer) as it is; the weights are new
  // and a quantized checkpoint has no optimizer state.
  for (const auto& entry : fs::directory_iterator(loaded.dir)) {
    const std::string file = entry.path().filename().string();
    if (!entry.is_regular_file() || file == "model.safetensors" || file == "optimizer.safetensors") continue;
    writer.add(file, read_file(entry.path().string()));
  }
  return writer.commit();
}

}  // namespace loom
