// Softmax attention, multi-head (Vaswani et al. 2017), grouped-query (Ainslie et al.
// 2023) and multi-query (Shazeer 2019) by n_kv_heads. Shapes: B batch, T new tokens, S keys
// (cached + new), H query heads, K key/value heads, G = H / K queries per key/value head,
// D head_dim. Causal in decoders; in encoders every query sees every non-padding key.
//
// Queries, keys and values come from one fused projection, wqkv: d_model -> (H + 2K) * D,
// rows ordered [q; k; v]. Grouped queries are folded into the row dimension of one batched
// matmul per key/value head, so keys and values are never repeated in memory.
//
// `attention` (attention.cpp) sees every earlier position; `local_attention` (local_attention.cpp)
// is this module with a window. model.qk_norm normalizes each head's queries and keys with the
// model's norm before RoPE (QK-layernorm, Dehghani et al. 2023; Wortsman et al. 2023).
#pragma once
#include "loom/nn/mixer.h"
#include "loom/nn/norm/norm.h"

namespace loom {

class AttentionImpl : public MixerImpl {
 public:
  // window: positions each query sees, its own included (0 = every earlier position).
  AttentionImpl(const ModelConfig& c, int64_t window);

  // x: [B, T, d_model] -> [B, T, d_model]
  torch::Tensor forward(const torch::Tensor& x, const MixerContext& ctx) override;
  // Keys and values, kPerPosition: [B, K, capacity, D] each.
  MixerState make_cache(int64_t batch, int64_t capacity, torch::TensorOptions options) override;

  torch::nn::Linear wqkv{nullptr}, wo{nullptr};
  std::shared_ptr<NormImpl> q_norm, k_norm;  // [head_dim], with model.qk_norm only
  torch::Tensor head_scale;                  // [H], NormFormer only

 private:
  static constexpr size_t kKeys = 0, kValues = 1;  // indices in the MixerState
  // 0 where query i (absolute position offset + i) may see key j, -inf where it may not (a later
  // key when causal; a key `window` or more away); rows repeated for the G query heads of a
  // group: [G*T, S], in the dtype of `like`.
  torch::Tensor mask_bias(int64_t g, int64_t t, int64_t s, int64_t offset, const torch::Tensor& like);

  int64_t n_heads_, n_kv_heads_, head_dim_;
  int64_t window_;  // 0 = unlimited
  bool causal_;
  bool bias_rank_;  // adds wo's bias: always, but on tensor-parallel ranks other than 0
  torch::Tensor bias_;
  int64_t bias_offset_ = -1;
};

}  // namespace loom
