#include "loom/nn/block.h"

#include <fmt/format.h>

namespace loom {

TransformerBlockImpl::TransformerBlockImpl(const ModelConfig& c, int64_t layer)
    : dropout_(c.dropout) {
  const auto& r = blocks();
  const std::string where = fmt::format("layer {}", layer);
  norm1 = register_module("norm1", r.norms.get(c.norm, where)(c, c.d_model));
  mixer = register_module("mixer", r.mixers.get(c.layer_mixers().at(layer), where)(c, layer));
  norm2 = register_module("norm2", r.norms.get(c.norm, where)(c, c.d_model));
  ffn = register_module("ffn", r.ffns.get(c.ffn, where)(c, layer));
}

torch::Tensor TransformerBlockImpl::forward(const torch::Tensor& x, const MixerContext& context) {
  auto h = x + torch::dropout(mixer->forward(norm1->forward(x), context), dropout_, is_training());
  return h + torch::dropout(ffn->forward(norm2->forward(h)), dropout_, is_training());
}

}  // namespace loom
