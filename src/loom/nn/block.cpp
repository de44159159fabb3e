#include "loom/nn/block.h"

#include <fmt/format.h>

#include "loom/core/error.h"

namespace loom {

TransformerBlockImpl::TransformerBlockImpl(const ModelConfig& c, int64_t layer)
    : dropout_(c.dropout) {
  const auto& r = blocks();
  const std::string where = fmt::format("layer {}", layer);
  norm1 = register_module("norm1", r.norms.get(c.norm, where)(c, c.d_model));
  mixer = register_module("mixer", r.mixers.get(c.layer_mixers().at(layer), where)(c, layer));
  norm2 = register_module("norm2", r.norms.get(c.norm, where)(c, c.d_model));
  ffn = register_module("ffn", r.ffns.get(c.ffn, where)(c, layer));
  placement_ = parse_norm_placement(c.norm_placement, where);
  if (placement_ == NormPlacement::kSandwich || placement_ == NormPlacement::kNormFormer)
    norm1_out = register_module("norm1_out", r.norms.get(c.norm, where)(c, c.d_model));
  if (placement_ == NormPlacement::kSandwich)
    norm2_out = register_module("norm2_out", r.norms.get(c.norm, where)(c, c.d_model));
}

NormPlacement parse_norm_placement(const std::string& name, const std::string& where) {
  if (name == "pre") return NormPlacement::kPre;
  if (name == "post") return NormPlacement::kPost;
  if (name == "sandwich") return NormPlacement::kSandwich;
  if (name == "normformer") return NormPlacement::kNormFormer;
  fail("{}: unknown norm placement '{}' (valid: pre, post, sandwich, normformer)", where, name);
}

torch::Tensor TransformerBlockImpl::forward(const torch::Tensor& x, const MixerContext& context) {
  auto drop = [&](const torch::Tensor& t) { return torch::dropout(t, dropout_, is_training()); };
  switch (placement_) {
    case NormPlacement::kPre: {  // x + f(norm(x)): GPT-2, LLaMA
      auto h = x + drop(mixer->forward(norm1->forward(x), context));
      return h + drop(ffn->forward(norm2->forward(h)));
    }
    case NormPlacement::kPost: {  // norm(x + f(x)): the original Transformer
      auto h = norm1->forward(x + drop(mixer->forward(x, context)));
      return norm2->forward(h + drop(ffn->forward(h)));
    }
    case NormPlacement::kNormFormer: {  // pre-norm + a norm on the attention output (NormFormer);
      // its head scales and FFN-internal norm live in the mixer and the FFN.
      auto h = x + drop(norm1_out->forward(mixer->forward(norm1->forward(x), context)));
      return h + drop(ffn->forward(norm2->forward(h)));
    }
    case NormPlacement::kSandwich: {  // x + norm_out(f(norm(x))): CogView, Gemma 2
      auto h = x + drop(norm1_out->forward(mixer->forward(norm1->forward(x), context)));
      return h + drop(norm2_out->forward(ffn->forward(norm2->forward(h))));
    }
  }
  fail("unreachable norm placement");
}

}  // namespace loom
