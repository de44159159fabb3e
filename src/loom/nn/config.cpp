#include "loom/nn/config.h"

#include <algorithm>
#include <type_traits>

#include <fmt/ranges.h>

#include "loom/core/error.h"
#include "loom/nn/block.h"
#include "loom/nn/blocks.h"

namespace loom {
namespace {

// Position schemes that act on the embeddings alone, and so suit any mixer.
std::vector<std::string> positions_without_hooks() {
  std::vector<std::string> out;
  for (const auto& name : blocks().positions.names()) {
    const auto& info = blocks().positions.info(name, "");
    if (!info.has("qk") && !info.has("scores")) out.push_back(name);
  }
  return out;
}

// Collects each option as text with its declaration (option_values).
class OptionCollector {
 public:
  template <class T, class... Tags>
  void operator()(const char* key, const T& value, const char*, const Tags&... tags) {
    OptionValue option;
    option.key = key;
    if constexpr (std::is_same_v<T, std::vector<std::string>>)
      option.value = fmt::format("[{}]", fmt::join(value, ", "));
    else option.value = fmt::format("{}", value);
    ((option.at_inference = tags), ...);
    options.push_back(std::move(option));
  }
  std::vector<OptionValue> options;
};

}  // namespace

std::vector<OptionValue> option_values(const ModelConfig& config) {
  OptionCollector collector;
  ModelConfig(config).visit(collector);
  // The keys each block's options struct registered (BlockInfo::options).
  blocks();
  for (auto& option : collector.options)
    for (const auto& info : block_catalogue())
      for (const auto& key : info.options)
        if (key == option.key) option.block = std::make_pair(info.family, info.name);
  return collector.options;
}

ModelConfig ModelConfig::encoder_part() const {
  ModelConfig c = *this;
  c.arch = "encoder";
  return c;
}

ModelConfig ModelConfig::decoder_part() const {
  ModelConfig c = *this;
  c.arch = "decoder";
  c.n_layers = decoder_layers();
  return c;
}

ModelConfig ModelConfig::for_layer(int64_t layer) const {
  ModelConfig c = *this;
  c.fixed_head_dim = head_dim();
  if (!layer_d_ff.empty()) c.d_ff = layer_d_ff.at(static_cast<size_t>(layer));
  if (!layer_heads.empty()) c.n_heads = layer_heads.at(static_cast<size_t>(layer));
  c.layer_d_ff.clear();
  c.layer_heads.clear();
  return c;
}

std::vector<std::string> ModelConfig::layer_mixers() const {
  if (!layers.empty()) return layers;
  return std::vector<std::string>(static_cast<size_t>(n_layers), mixer);
}

std::vector<std::pair<std::string, std::string>> ModelConfig::used_blocks() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& m : layer_mixers())
    if (std::find(out.begin(), out.end(), std::pair<std::string, std::string>("mixer", m)) == out.end())
      out.emplace_back("mixer", m);
  out.emplace_back("position", position);
  out.emplace_back("norm", norm);
  out.emplace_back("ffn", ffn);
  return out;
}

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t value) {
    if (value <= 0) fail("{}: model.{} must be positive, got {}", source, key, value);
  };
  positive("vocab_size", vocab_size);
  positive("d_model", d_model);
  positive("n_layers", n_layers);
  positive("n_heads", n_heads);
  positive("d_ff", d_ff);
  positive("max_seq_len", max_seq_len);
  if (n_kv_heads < 0) fail("{}: model.n_kv_heads must be >= 0, got {}", source, n_kv_heads);
  if (fixed_head_dim < 0)
    fail("{}: model.head_dim must be >= 0 (0 = d_model / n_heads), got {}", source, fixed_head_dim);
  if (fixed_head_dim == 0 && d_model % n_heads != 0)
    fail("{}: model.d_model ({}) must be divisible by model.n_heads ({}) (or set model.head_dim)", source, d_model,
         n_heads);
  if (n_heads % kv_heads() != 0)
    fail("{}: model.n_heads ({}) must be divisible by model.n_kv_heads ({})", source, n_heads, kv_heads());
  for (const auto& [key, list] : {std::pair<const char*, const std::vector<int64_t>*>{"layer_d_ff", &layer_d_ff},
                                  {"layer_heads", &layer_heads}}) {
    if (list->empty()) continue;
    if (static_cast<int64_t>(list->size()) != n_layers)
      fail("{}: model.{} lists {} layers but model.n_layers is {}", source, key, list->size(), n_layers);
    for (size_t i = 0; i < list->size(); ++i)
      if ((*list)[i] <= 0) fail("{}: model.{}[{}] must be positive, got {}", source, key, i, (*list)[i]);
  }
  for (size_t i = 0; i < layer_heads.size(); ++i)
    if (n_kv_heads > 0 && layer_heads[i] % n_kv_heads != 0)
      fail("{}: model.layer_heads[{}] ({}) must be divisible by model.n_kv_heads ({})", source, i, layer_heads[i],
           n_kv_heads);
  local_attention.validate(source);
  moe.validate(source);
  mamba.validate(source);
  if (dropout < 0 || dropout >= 1) fail("{}: model.dropout must be in [0, 1), got {}", source, dropout);
  if (norm_eps <= 0) fail("{}: model.norm_eps must be positive, got {}", source, norm_eps);
  if (init_std <= 0) fail("{}: model.init_std must be positive, got {}", source, init_std);
  if (!layers.empty() && static_cast<int64_t>(layers.size()) != n_layers)
    fail("{}: model.layers lists {} layers but model.n_layers is {}", source, layers.size(), n_layers);

  if (arch != "decoder" && arch != "encoder" && arch != "encoder_decoder")
    fail("{}: model.arch must be decoder, encoder or encoder_decoder, got '{}'", source, arch);
  if (dec_layers < 0) fail("{}: model.dec_layers must be >= 0, got {}", source, dec_layers);
  if (dec_layers > 0 && !encoder_decoder())
    fail("{}: model.dec_layers applies to model.arch encoder_decoder only", source);
  if (encoder_decoder()) {
    if (per_layer_widths())
      fail("{}: model.layer_d_ff and model.layer_heads are not supported with model.arch encoder_decoder", source);
    if (!layers.empty())
      fail("{}: model.layers (per-layer mixers) is not supported with model.arch encoder_decoder: use model.mixer",
           source);
    if (n_classes != 0) fail("{}: model.n_classes applies to model.arch encoder only", source);
    // Both halves must hold: a bidirectional form for the encoder, a causal one for the decoder.
    encoder_part().check_blocks(source);
    decoder_part().check_blocks(source);
    return;
  }
  if (arch == "encoder") {
    if (n_classes < 2) fail("{}: model.n_classes must be at least 2 for an encoder, got {}", source, n_classes);
    if (pooling != "cls" && pooling != "mean") fail("{}: model.pooling must be cls or mean, got '{}'", source, pooling);
  } else if (n_classes != 0) {
    fail("{}: model.n_classes applies to model.arch encoder only (this model is a decoder)", source);
  }
  check_blocks(source);
}

void ModelConfig::check_tensor_parallel(int64_t t, const std::string& source) const {
  if (t < 1) fail("{}: train.tensor_parallel must be >= 1, got {}", source, t);
  if (t == 1) return;
  if (arch != "decoder") fail("{}: train.tensor_parallel {} needs model.arch decoder, got {}", source, t, arch);
  if (per_layer_widths())
    fail(
        "{}: train.tensor_parallel {}: model.layer_d_ff / model.layer_heads (layers of different widths) are not "
        "supported",
        source, t);
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"n_heads", n_heads},
                                   {"n_kv_heads", kv_heads()},
                                   {"d_ff", d_ff},
                                   {"vocab_size", vocab_size}})
    if (value % t != 0)
      fail("{}: train.tensor_parallel {} must divide model.{} ({}): each rank holds 1/{} of it", source, t, key, value,
           t);
  if (norm_placement == "normformer")
    fail(
        "{}: train.tensor_parallel {}: model.norm_placement normformer is not supported (its per-head scales and "
        "FFN norm are not sliced)",
        source, t);
  const auto& r = blocks();
  // Schemes that bias softmax scores hold one bias per head of the whole model.
  if (r.positions.info(position, "model.position").has("scores"))
    fail(
        "{}: train.tensor_parallel {}: model.position '{}' biases each head's scores, which is not sliced by head; "
        "choose one of: {}",
        source, t, position, fmt::join(positions_without_hooks(), ", "));
  const auto mixers = layer_mixers();
  for (size_t i = 0; i < mixers.size(); ++i)
    if (!r.mixers.info(mixers[i], "model.layers").has("tensor_parallel"))
      fail("{}: train.tensor_parallel {}: layer {}'s mixer '{}' cannot be sliced (mixers that can: {})", source, t, i,
           mixers[i], fmt::join(r.mixers.names("tensor_parallel"), ", "));
  if (!r.ffns.info(ffn, "model.ffn").has("tensor_parallel"))
    fail("{}: train.tensor_parallel {}: model.ffn '{}' cannot be sliced (feed-forward blocks that can: {})", source, t,
         ffn, fmt::join(r.ffns.names("tensor_parallel"), ", "));
}

void ModelConfig::check_blocks(const std::string& source) const {
  const auto& r = blocks();
  const auto mixers = layer_mixers();
  const auto& position_info = r.positions.info(position, fmt::format("{}: model.position", source));
  r.norms.get(norm, fmt::format("{}: model.norm", source));
  parse_norm_placement(norm_placement, fmt::format("{}: model.norm_placement", source));
  r.ffns.get(ffn, fmt::format("{}: model.ffn", source));
  // Each layer's mixer must have the model's form (causal for decoders, bidirectional for
  // encoders); a position scheme that acts through a mixer hook (rotating queries and keys,
  // biasing softmax scores) needs a layer with that hook, and must not be silently dropped by a
  // layer that has queries and keys but no softmax scores.
  const std::string form = causal() ? "causal" : "bidirectional";
  const std::string hook = position_info.has("scores") ? "scores" : position_info.has("qk") ? "qk" : "";
  bool hooked = false;
  for (size_t i = 0; i < mixers.size(); ++i) {
    const auto& info = r.mixers.info(mixers[i], fmt::format("{}: layer {}", source, i));
    if (!info.has(form))
      fail("{}: layer {}: mixer '{}' has no {} form, which model.arch {} needs (mixers that have one: {})", source, i,
           mixers[i], form, arch, fmt::join(r.mixers.names(form), ", "));
    if (hook == "scores" && info.has("qk") && !info.has("scores"))
      fail(
          "{}: layer {}: model.position '{}' biases softmax scores, which mixer '{}' does not have "
          "(choose one of: {})",
          source, i, position, mixers[i], fmt::join(positions_without_hooks(), ", "));
    hooked = hooked || (!hook.empty() && info.has(hook));
  }
  if (!hook.empty() && !hooked)
    fail("{}: model.position '{}' acts inside attention, but no layer has {} (layers: {}); choose one of: {}", source,
         position, hook == "scores" ? "softmax scores" : "queries and keys", fmt::join(mixers, ", "),
         fmt::join(positions_without_hooks(), ", "));
  if (position.rfind("rope", 0) == 0 && head_dim() % 2 != 0)
    fail("{}: model.position '{}' needs an even head_dim, got {}", source, position, head_dim());
}

}  // namespace loom
