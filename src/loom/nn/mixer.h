// Token mixers: the part of a layer that moves information between positions (attention, linear
// attention, Mamba, Fourier mixing). [B, T, d_model] -> [B, T, d_model]. A mixer is causal in a
// decoder and bidirectional in an encoder (ModelConfig::causal()); its registry traits say which
// forms it has.
#pragma once
#include <functional>
#include <memory>

#include <torch/torch.h>

#include "loom/core/registry.h"
#include "loom/nn/config.h"
#include "loom/nn/position/position.h"

namespace loom {

// One layer's incremental-decoding state. Attention keeps keys and values of every position
// seen so far: k, v [B, n_kv_heads, capacity, head_dim], valid up to the context's offset.
// Mamba keeps a fixed-size state: conv [B, d_conv - 1, d_inner] (the last inputs of its causal
// convolution) and ssm [B, d_inner, d_state].
// Linear attention keeps running sums: kv_sum [B, H, head_dim, head_dim], k_sum [B, H, head_dim].
// Decoder layers of an encoder-decoder also keep the cross-attention keys and values of the
// encoder output, computed once: cross_k, cross_v [B, n_kv_heads, S, head_dim].
struct LayerCache {
  torch::Tensor k, v;
  torch::Tensor cross_k, cross_v;
  torch::Tensor conv, ssm;
  torch::Tensor kv_sum, k_sum;
};

struct MixerContext {
  PositionImpl* position = nullptr;
  int64_t offset = 0;            // absolute position of the first input token
  LayerCache* cache = nullptr;   // null: no incremental decoding
  torch::Tensor padding = {};    // encoders: [B, T] bool, true at padding tokens (no one attends to them)
  // Encoder-decoder decoders: the encoder output [B, S, d_model] that cross-attention reads, and
  // its padding [B, S] bool (true at padding). With a cache, the memory is projected once.
  torch::Tensor memory = {};
  torch::Tensor memory_padding = {};
};

class MixerImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, const MixerContext& context) = 0;
  // Allocates this mixer's empty decoding state for `batch` sequences of up to `capacity` tokens.
  virtual LayerCache make_cache(int64_t batch, int64_t capacity, torch::TensorOptions options) = 0;

  // Re-applies initializations that differ from the model's generic N(0, init_std) for linear
  // layers (e.g. Mamba's step-size bias), after the model has run its generic pass.
  virtual void reset_special_parameters() {}

  // Stability tracking (Wortsman et al. 2023): while track_logits is set, softmax-attention
  // mixers keep the largest attention logit of every forward since tracking began in max_logit
  // (all micro-batches of a step).
  bool track_logits = false;
  torch::Tensor max_logit;
};

// Cross-attention of an encoder-decoder's decoder layer (Vaswani et al. 2017): queries from the
// decoder, keys and values from context.memory; n_kv_heads as self-attention. No positions.
std::shared_ptr<MixerImpl> make_cross_attention(const ModelConfig& config);

using MixerFactory = std::function<std::shared_ptr<MixerImpl>(const ModelConfig&, int64_t layer)>;
void register_mixers(Registry<MixerFactory>& registry);
void register_mamba(Registry<MixerFactory>& registry);
void register_linear_attention(Registry<MixerFactory>& registry);
void register_fnet(Registry<MixerFactory>& registry);

}  // namespace loom
