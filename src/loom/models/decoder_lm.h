// Decoder-only language model: token embedding, position scheme, n_layers residual blocks, final
// norm, output projection (tied to the embedding or not). GPT-2 and LLaMA are two recipes of it.
// Shapes: B batch, T tokens, V vocab_size.
#pragma once
#include <vector>

#include "loom/nn/block.h"

namespace loom {

// Incremental-decoding state of a whole model: one LayerCache per layer.
struct KVCache {
  std::vector<LayerCache> layers;
  int64_t capacity = 0;
};

class DecoderLMImpl : public torch::nn::Module {
 public:
  explicit DecoderLMImpl(ModelConfig config);

  // tokens: [B, T] int64 at positions offset..offset+T-1 -> logits [B, T, V]. With a cache,
  // keys/values of these positions are stored and earlier ones reused.
  torch::Tensor forward(const torch::Tensor& tokens, int64_t offset = 0, KVCache* cache = nullptr);
  // The hidden states before the output projection: [B, T, d_model].
  torch::Tensor hidden(const torch::Tensor& tokens, int64_t offset = 0, KVCache* cache = nullptr);
  torch::Tensor logits(const torch::Tensor& hidden);
  // The output projection [V, d_model]: lm_head's weight, or tok_emb's when tied.
  torch::Tensor output_weight() { return lm_head ? lm_head->weight : tok_emb->weight; }

  KVCache make_cache(int64_t batch, int64_t capacity);
  // Sum of the layers' auxiliary losses from the last forward (MoE load balancing), or undefined.
  torch::Tensor aux_loss();
  // Have attention layers record their largest logit on the next forwards; then read the
  // maximum over layers (NaN when no layer recorded one).
  void track_attention_logits(bool on);
  double max_attention_logit();
  // GPT-2's init: N(0, init_std), residual output projections N(0, init_std / sqrt(2 n_layers)),
  // biases 0, norm weights 1.
  void reset_parameters();
  // Whether a parameter gets weight decay: matrices of linear layers (and stacked expert
  // matrices) do; embeddings, norms, biases and other vectors do not.
  bool is_decayed(const std::string& name, const torch::Tensor& p) const;
  int64_t num_parameters();

  const ModelConfig& config() const { return config_; }

  torch::nn::Embedding tok_emb{nullptr};  // [V, d_model]
  std::shared_ptr<PositionImpl> pos;
  torch::nn::ModuleList layers;
  std::shared_ptr<NormImpl> norm_f;
  torch::nn::Linear lm_head{nullptr};  // [V, d_model]; null when tied to tok_emb

 private:
  ModelConfig config_;
};
TORCH_MODULE(DecoderLM);

}  // namespace loom
