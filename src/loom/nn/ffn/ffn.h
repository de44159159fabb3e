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

 protected:
  // Tensor parallel (nn/tensor_parallel.h): w_in's rows (and bias) are cut into `segments` of
  // the whole model's w_in, w_out's columns into d_ff; w_out's bias, added by rank 0 only, has
  // partial gradients.
  void declare_slices(const ModelConfig& c, std::vector<int64_t> segments);
  // w_out(h), its bias added only when `with_bias` (tensor-parallel rank 0, or no slicing).
  static torch::Tensor project_out(torch::nn::Linear& w_out, const torch::Tensor& h, bool with_bias);
};

using FfnFactory = std::function<std::shared_ptr<FfnImpl>(const ModelConfig&, int64_t layer)>;

class NormImpl;
// NormFormer's norm after an FFN's first layer (Shleifer et al. 2021), registered in `ffn` as
// "mid_norm" over `dim` features; null unless model.norm_placement is normformer.
std::shared_ptr<NormImpl> make_mid_norm(const ModelConfig& c, int64_t dim, torch::nn::Module& ffn);

}  // namespace loom
