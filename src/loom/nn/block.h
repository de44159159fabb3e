// One residual layer: a token mixer, in encoder-decoder decoders a cross-attention sublayer
// (norm_cross; placed like the mixer's norm, pre or post), and a feed-forward block, each wrapped
// with norms placed
//   pre:      x = x + mixer(norm1(x));             x = x + ffn(norm2(x))
//   post:     x = norm1(x + mixer(x));             x = norm2(x + ffn(x))
//   sandwich: x = x + norm1_out(mixer(norm1(x)));  x = x + norm2_out(ffn(norm2(x)))
//   normformer: x = x + norm1_out(mixer(norm1(x)));  x = x + ffn(norm2(x)), where attention also
//             scales each head's output and the FFN normalizes its hidden layer (Shleifer et al. 2021)
#pragma once
#include "loom/nn/blocks.h"
#include "loom/nn/tensor_parallel.h"

namespace loom {

enum class NormPlacement { kPre, kPost, kSandwich, kNormFormer };
// "pre", "post", "sandwich" or "normformer"; anything else is an error naming `where`.
NormPlacement parse_norm_placement(const std::string& name, const std::string& where);

class TransformerBlockImpl : public torch::nn::Module {
 public:
  TransformerBlockImpl(const ModelConfig& config, int64_t layer, bool cross_attention = false);
  // x: [B, T, d_model] -> [B, T, d_model]. With a cache, the mixer and the cross-attention keep
  // their decoding state in it (context.state is set from it for each).
  torch::Tensor forward(const torch::Tensor& x, const MixerContext& context, LayerCache* cache = nullptr);
  // Built with tp_size > 1: the operations that join the mixer's and the FFN's slices.
  void set_tensor_parallel(TensorParallelOps* ops) { tp_ = ops; }

  std::shared_ptr<NormImpl> norm1, norm2;
  std::shared_ptr<NormImpl> norm1_out, norm2_out;  // sandwich (both), normformer (norm1_out)
  std::shared_ptr<MixerImpl> mixer;
  std::shared_ptr<NormImpl> norm_cross;  // with cross-attention only
  std::shared_ptr<MixerImpl> cross;
  std::shared_ptr<FfnImpl> ffn;

 private:
  double dropout_;
  NormPlacement placement_ = NormPlacement::kPre;
  TensorParallelOps* tp_ = nullptr;
};
TORCH_MODULE(TransformerBlock);

}  // namespace loom
