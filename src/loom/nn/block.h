// One pre-norm residual layer: x = x + mixer(norm1(x)); x = x + ffn(norm2(x)).
#pragma once
#include "loom/nn/blocks.h"

namespace loom {

class TransformerBlockImpl : public torch::nn::Module {
 public:
  TransformerBlockImpl(const ModelConfig& config, int64_t layer);
  // x: [B, T, d_model] -> [B, T, d_model]
  torch::Tensor forward(const torch::Tensor& x, const MixerContext& context);

  std::shared_ptr<NormImpl> norm1, norm2;
  std::shared_ptr<MixerImpl> mixer;
  std::shared_ptr<FfnImpl> ffn;

 private:
  double dropout_;
};
TORCH_MODULE(TransformerBlock);

}  // namespace loom
