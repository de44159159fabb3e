// Token mixers: the part of a layer that moves information between positions (attention, linear
// attention, Mamba, Fourier mixing). [B, T, d_model] -> [B, T, d_model]. A mixer is causal in a
// decoder and bidirectional in an encoder (ModelConfig::causal()); its registry traits say which
// forms it has.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "loom/core/registry.h"
#include "loom/nn/config.h"
#include "loom/nn/module.h"
#include "loom/nn/position/position.h"

namespace loom {

// A mixer's incremental-decoding state: tensors the mixer allocates in make_cache and reads and
// writes itself, each with the kind that tells code outside the mixer (beam search's reordering,
// an engine's reset) what to do with it, so that no other layer lists a mixer's state:
//   kPerPosition: one entry per position, [B, heads, capacity, head_dim] (attention's keys and
//                 values); entries past the sequence's length are never read, so a new sequence
//                 just overwrites them;
//   kRecurrent:   a fixed-size state carried from token to token (Mamba's conv window [B, d_conv - 1,
//                 d_inner] and scan state [B, d_inner, d_state]; linear attention's sums
//                 [B, H, head_dim, head_dim] and [B, H, head_dim]): zeroed when a sequence starts over;
//   kMemory:      computed once from the encoder output (cross-attention's keys and values
//                 [B, n_kv_heads, S, head_dim]); it belongs to the source sentence.
// Every kind has the batch as its first dimension.
enum class StateKind { kPerPosition, kRecurrent, kMemory };

struct MixerState {
  std::vector<torch::Tensor> tensors;
  std::vector<StateKind> kinds;

  // Appends a tensor and returns its index.
  size_t add(StateKind kind, torch::Tensor tensor) {
    tensors.push_back(std::move(tensor));
    kinds.push_back(kind);
    return tensors.size() - 1;
  }
  torch::Tensor& operator[](size_t i) { return tensors[i]; }
  bool empty() const { return tensors.empty(); }
};

// One layer's state: its mixer's, and in an encoder-decoder's decoder layers its cross-attention's.
struct LayerCache {
  MixerState mixer, cross;
};

struct MixerContext {
  PositionImpl* position = nullptr;
  int64_t offset = 0;           // absolute position of the first input token
  MixerState* state = nullptr;  // this mixer's decoding state; null: no incremental decoding
  torch::Tensor padding = {};   // encoders: [B, T] bool, true at padding tokens (no one attends to them)
  // Encoder-decoder decoders: the encoder output [B, S, d_model] that cross-attention reads, and
  // its padding [B, S] bool (true at padding). With a cache, the memory is projected once.
  torch::Tensor memory = {};
  torch::Tensor memory_padding = {};
};

class MixerImpl : public BlockModule {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, const MixerContext& context) = 0;
  // Allocates this mixer's empty decoding state for `batch` sequences of up to `capacity` tokens.
  virtual MixerState make_cache(int64_t batch, int64_t capacity, torch::TensorOptions options) = 0;

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

}  // namespace loom
