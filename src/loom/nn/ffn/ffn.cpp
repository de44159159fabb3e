// What the feed-forward blocks share (ffn.h).
#include "loom/nn/ffn/ffn.h"

#include "loom/nn/blocks.h"

namespace loom {

std::shared_ptr<NormImpl> make_mid_norm(const ModelConfig& c, int64_t dim, torch::nn::Module& ffn) {
  if (c.norm_placement != "normformer") return nullptr;
  return ffn.register_module("mid_norm", blocks().norms.get(c.norm, "model.norm")(c, dim));
}

}  // namespace loom
