// Position-wise feed-forward blocks: [B, T, d_model] -> [B, T, d_model]. Parameters are named
// w_in (d_model -> hidden) and w_out (hidden -> d_model, a residual projection).
#pragma once
#include <functional>
#include <memory>

#include <torch/torch.h>

#include "loom/core/registry.h"
#include "loom/nn/config.h"

namespace loom {

class FfnImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  // An auxiliary training loss from the last forward (MoE load balancing), or undefined.
  virtual torch::Tensor aux_loss() const { return {}; }
};

using FfnFactory = std::function<std::shared_ptr<FfnImpl>(const ModelConfig&, int64_t layer)>;
void register_ffns(Registry<FfnFactory>& registry);
void register_moe(Registry<FfnFactory>& registry);

}  // namespace loom
