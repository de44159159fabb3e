// Position-wise feed-forward blocks: [B, T, d_model] -> [B, T, d_model]. Parameters are named
// w_in (d_model -> hidden) and w_out (hidden -> d_model, a residual projection). The blocks:
// mlp.cpp (relu, gelu), glu.cpp (swiglu, geglu), moe.cpp.
#pragma once
#include <functional>
#include <memory>

#include <torch/torch.h>

#include "loom/core/registry.h"
#include "loom/nn/config.h"
#include "loom/nn/module.h"

namespace loom {

class FfnImpl : public BlockModule {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  // An auxiliary training loss from the last forward (MoE load balancing), or undefined.
  virtual torch::Tensor aux_loss() const { return {}; }
};

using FfnFactory = std::function<std::shared_ptr<FfnImpl>(const ModelConfig&, int64_t layer)>;

class NormImpl;
// NormFormer's norm after an FFN's first layer (Shleifer et al. 2021), registered in `ffn` as
// "mid_norm" over `dim` features; null unless model.norm_placement is normformer.
std::shared_ptr<NormImpl> make_mid_norm(const ModelConfig& c, int64_t dim, torch::nn::Module& ffn);

}  // namespace loom
