// What the feed-forward blocks share (ffn.h).
#include "loom/nn/ffn/ffn.h"

#include "loom/nn/blocks.h"

namespace loom {

std::shared_ptr<NormImpl> make_mid_norm(const ModelConfig& c, int64_t dim, torch::nn::Module& ffn) {
  if (c.norm_placement != "normformer") return nullptr;
  return ffn.register_module("mid_norm", blocks().norms.get(c.norm, "model.norm")(c, dim));
}

void FfnImpl::declare_slices(const ModelConfig& c, std::vector<int64_t> segments) {
  declare_shard("w_in.weight", {0, segments});
  declare_shard("w_out.weight", {1, {c.d_ff}});
  if (c.bias) declare_shard("w_in.bias", {0, std::move(segments)}), declare("w_out.bias", kPartialGradient);
}

torch::Tensor FfnImpl::project_out(torch::nn::Linear& w_out, const torch::Tensor& h, bool with_bias) {
  return with_bias ? w_out(h) : torch::linear(h, w_out->weight);
}

}  // namespace loom
