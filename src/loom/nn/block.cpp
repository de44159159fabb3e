#include "loom/nn/block.h"

#include <fmt/format.h>

#include "loom/core/error.h"

namespace loom {

TransformerBlockImpl::TransformerBlockImpl(const ModelConfig& c, int64_t layer, bool cross_attention)
    : dropout_(c.dropout) {
  const auto& r = blocks();
  const std::string where = fmt::format("layer {}", layer);
  const ModelConfig own = c.for_layer(layer);  // this layer's d_ff and heads
  norm1 = register_module("norm1", r.norms.get(c.norm, where)(c, c.d_model));
  mixer = register_module("mixer", r.mixers.get(c.layer_mixers().at(layer), where)(own, layer));
  if (cross_attention) {
    norm_cross = register_module("norm_cross", r.norms.get(c.norm, where)(c, c.d_model));
    cross = register_module("cross", make_cross_attention(own));
  }
  norm2 = register_module("norm2", r.norms.get(c.norm, where)(c, c.d_model));
  ffn = register_module("ffn", r.ffns.get(c.ffn, where)(own, layer));
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

torch::Tensor TransformerBlockImpl::forward(const torch::Tensor& x, const MixerContext& layer_context,
                                            LayerCache* cache) {
  MixerContext context = layer_context, cross_context = layer_context;
  context.state = cache ? &cache->mixer : nullptr;
  cross_context.state = cache ? &cache->cross : nullptr;
  auto drop = [&](const torch::Tensor& t) { return torch::dropout(t, dropout_, is_training()); };
  // The sublayers; tensor parallel, each rank's slice of them, joined (Megatron's f and g).
  auto mix = [&](const torch::Tensor& h) {
    return tp_ ? tp_->join(mixer->forward(tp_->enter(h), context)) : mixer->forward(h, context);
  };
  auto feed = [&](const torch::Tensor& h) { return tp_ ? tp_->join(ffn->forward(tp_->enter(h))) : ffn->forward(h); };
  // The cross-attention sublayer (identity without one): post-norm in post-norm layers, else pre-norm.
  auto attend_memory = [&](const torch::Tensor& h) {
    if (!cross) return h;
    if (placement_ == NormPlacement::kPost) return norm_cross->forward(h + drop(cross->forward(h, cross_context)));
    return h + drop(cross->forward(norm_cross->forward(h), cross_context));
  };
  switch (placement_) {
    case NormPlacement::kPre: {  // x + f(norm(x)): GPT-2, LLaMA
      auto h = attend_memory(x + drop(mix(norm1->forward(x))));
      return h + drop(feed(norm2->forward(h)));
    }
    case NormPlacement::kPost: {  // norm(x + f(x)): the original Transformer
      auto h = attend_memory(norm1->forward(x + drop(mix(x))));
      return norm2->forward(h + drop(feed(h)));
    }
    case NormPlacement::kNormFormer: {  // pre-norm + a norm on the attention output (NormFormer);
      // its head scales and FFN-internal norm live in the mixer and the FFN.
      auto h = attend_memory(x + drop(norm1_out->forward(mix(norm1->forward(x)))));
      return h + drop(feed(norm2->forward(h)));
    }
    case NormPlacement::kSandwich: {  // x + norm_out(f(norm(x))): CogView, Gemma 2
      auto h = attend_memory(x + drop(norm1_out->forward(mix(norm1->forward(x)))));
      return h + drop(norm2_out->forward(feed(norm2->forward(h))));
    }
  }
  fail("unreachable norm placement");
}

}  // namespace loom
