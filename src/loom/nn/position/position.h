// Position schemes. A scheme acts at up to three places, each a no-op by default:
// added to the token embeddings (learned, sinusoidal), rotating queries and keys (RoPE), or
// biasing attention scores (ALiBi). Shapes: B batch, T new tokens, S keys, H heads.
#pragma once
#include <functional>
#include <memory>

#include <torch/torch.h>

#include "loom/core/registry.h"
#include "loom/nn/config.h"
#include "loom/nn/module.h"

namespace loom {

class PositionImpl : public BlockModule {
 public:
  // x: [B, T, d_model] embeddings of positions offset..offset+T-1 -> same shape.
  virtual torch::Tensor embed(const torch::Tensor& x, int64_t offset) { return x; }
  // q: [B, T, H, head_dim], k: [B, T, n_kv_heads, head_dim] -> same shapes.
  virtual std::pair<torch::Tensor, torch::Tensor> rotate(const torch::Tensor& q, const torch::Tensor& k,
                                                         int64_t offset) {
    return {q, k};
  }
  // Additive score bias [H, T, S] for queries at offset..offset+T-1 and keys 0..S-1, or an
  // undefined tensor when the scheme adds none.
  virtual torch::Tensor attention_bias(int64_t n_heads, int64_t t, int64_t s, int64_t offset) { return {}; }
};

using PositionFactory = std::function<std::shared_ptr<PositionImpl>(const ModelConfig&)>;

// Fails unless positions offset..offset+t-1 fit the model's context of max_seq_len tokens.
void check_position_range(int64_t offset, int64_t t, int64_t max_seq_len);

}  // namespace loom
