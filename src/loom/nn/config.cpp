#include "loom/nn/config.h"

#include <fmt/ranges.h>

#include "loom/core/error.h"
#include "loom/nn/block.h"
#include "loom/nn/blocks.h"

namespace loom {

std::vector<std::string> ModelConfig::layer_mixers() const {
  if (!layers.empty()) return layers;
  return std::vector<std::string>(static_cast<size_t>(n_layers), mixer);
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
  if (d_model % n_heads != 0)
    fail("{}: model.d_model ({}) must be divisible by model.n_heads ({})", source, d_model, n_heads);
  if (n_heads % kv_heads() != 0)
    fail("{}: model.n_heads ({}) must be divisible by model.n_kv_heads ({})", source, n_heads,
         kv_heads());
  positive("window", window);
  positive("n_experts", n_experts);
  positive("d_state", d_state);
  positive("d_conv", d_conv);
  positive("expand", expand);
  if (dt_rank < 0) fail("{}: model.dt_rank must be >= 0, got {}", source, dt_rank);
  positive("top_k", top_k);
  if (top_k > n_experts) fail("{}: model.top_k ({}) exceeds model.n_experts ({})", source, top_k, n_experts);
  if (moe_aux_weight < 0) fail("{}: model.moe_aux_weight must be >= 0, got {}", source, moe_aux_weight);
  if (dropout < 0 || dropout >= 1) fail("{}: model.dropout must be in [0, 1), got {}", source, dropout);
  if (norm_eps <= 0) fail("{}: model.norm_eps must be positive, got {}", source, norm_eps);
  if (init_std <= 0) fail("{}: model.init_std must be positive, got {}", source, init_std);
  if (!layers.empty() && static_cast<int64_t>(layers.size()) != n_layers)
    fail("{}: model.layers lists {} layers but model.n_layers is {}", source, layers.size(), n_layers);

  const auto& r = blocks();
  const auto mixers = layer_mixers();
  for (size_t i = 0; i < mixers.size(); ++i)
    r.mixers.get(mixers[i], fmt::format("{}: layer {}", source, i));
  r.positions.get(position, fmt::format("{}: model.position", source));
  r.norms.get(norm, fmt::format("{}: model.norm", source));
  parse_norm_placement(norm_placement, fmt::format("{}: model.norm_placement", source));
  r.ffns.get(ffn, fmt::format("{}: model.ffn", source));
  // Position schemes that act inside softmax attention need such a layer to act in.
  const bool in_attention = position.rfind("rope", 0) == 0 || position == "alibi";
  bool any_attention = false;
  for (size_t i = 0; i < mixers.size(); ++i) {
    const bool softmax = mixers[i] == "attention" || mixers[i] == "local_attention";
    any_attention = any_attention || softmax || (mixers[i] == "linear_attention" && position != "alibi");
    if (position == "alibi" && mixers[i] == "linear_attention")
      fail("{}: layer {}: model.position 'alibi' biases softmax scores, which mixer '{}' does not have "
           "(choose rope, learned, sinusoidal or none)", source, i, mixers[i]);
  }
  if (in_attention && !any_attention)
    fail("{}: model.position '{}' acts inside attention, but no layer has attention (layers: {}); "
         "choose learned, sinusoidal or none", source, position, fmt::format("{}", fmt::join(mixers, ", ")));
  if (position.rfind("rope", 0) == 0 && head_dim() % 2 != 0)
    fail("{}: model.position '{}' needs an even head_dim, got {}", source, position, head_dim());
}

}  // namespace loom
