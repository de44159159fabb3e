// Cross-attention of an encoder-decoder's decoder layers (Vaswani et al. 2017): queries from the
// decoder, keys and values from the encoder output (MixerContext::memory), n_kv_heads as
// self-attention, no positions. Not a registered block: every encoder-decoder has it
// (make_cross_attention, nn/mixer.h). Shapes as attention.h, S the source length.
#include <cmath>
#include <limits>

#include "loom/nn/mixer.h"

namespace loom {
namespace {

class CrossAttentionImpl : public MixerImpl {
 public:
  explicit CrossAttentionImpl(const ModelConfig& c)
      : n_heads_(c.n_heads), n_kv_heads_(c.kv_heads()), head_dim_(c.head_dim()) {
    wq = register_linear("wq", c.d_model, n_heads_ * head_dim_, c.bias, kQuantizable);
    wkv = register_linear("wkv", c.d_model, 2 * n_kv_heads_ * head_dim_, c.bias, kQuantizable);
    wo = register_linear("wo", n_heads_ * head_dim_, c.d_model, c.bias, kQuantizable | kResidualOutput);
    const int64_t kv_rows = n_kv_heads_ * head_dim_;
    declare_fused("wkv.weight", {0, {kv_rows, kv_rows}});
    if (c.bias) declare_fused("wkv.bias", {0, {kv_rows, kv_rows}});
  }

  // x: [B, T, d_model], context.memory [B, S, d_model] -> [B, T, d_model]
  torch::Tensor forward(const torch::Tensor& x, const MixerContext& ctx) override {
    const int64_t b = x.size(0), t = x.size(1);
    const int64_t h = n_heads_, k_heads = n_kv_heads_, d = head_dim_, g = h / k_heads;
    torch::Tensor k, v;  // [B, K, S, D]
    if (ctx.state != nullptr && !ctx.state->empty()) {
      k = (*ctx.state)[kKeys], v = (*ctx.state)[kValues];
    } else {
      TORCH_CHECK(ctx.memory.defined(), "cross-attention needs the encoder output (context.memory)");
      const int64_t s = ctx.memory.size(1);
      auto kv = wkv(ctx.memory).view({b, s, 2 * k_heads, d});
      k = kv.narrow(2, 0, k_heads).transpose(1, 2).contiguous();
      v = kv.narrow(2, k_heads, k_heads).transpose(1, 2).contiguous();
      if (ctx.state != nullptr) ctx.state->add(StateKind::kMemory, k), ctx.state->add(StateKind::kMemory, v);
    }
    const int64_t s = k.size(2);
    auto q = wq(x).view({b, t, k_heads, g, d}).permute({0, 2, 3, 1, 4}).reshape({b * k_heads, g * t, d});
    k = k.to(q.scalar_type()), v = v.to(q.scalar_type());
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    auto scores = torch::bmm(q, k.reshape({b * k_heads, s, d}).transpose(1, 2)).mul_(scale);  // [B*K, G*T, S]
    if (ctx.memory_padding.defined()) {
      auto pad = torch::zeros({b, 1, 1, s}, scores.options())
                     .masked_fill(ctx.memory_padding.view({b, 1, 1, s}), -std::numeric_limits<float>::infinity());
      scores = (scores.view({b, k_heads, g * t, s}) + pad).view({b * k_heads, g * t, s});
    }
    if (track_logits) {
      auto m = scores.detach().max().to(torch::kFloat);
      max_logit = max_logit.defined() ? torch::maximum(max_logit, m) : m;
    }
    auto out = torch::bmm(torch::softmax(scores, -1), v.reshape({b * k_heads, s, d}))  // [B*K, G*T, D]
                   .view({b, k_heads, g, t, d})
                   .permute({0, 3, 1, 2, 4})
                   .reshape({b, t, h * d});
    return wo(out);
  }

  // The keys and values (kMemory) are added by the first forward with this state.
  MixerState make_cache(int64_t, int64_t, torch::TensorOptions) override { return {}; }

  torch::nn::Linear wq{nullptr}, wkv{nullptr}, wo{nullptr};

 private:
  static constexpr size_t kKeys = 0, kValues = 1;  // indices in the MixerState
  int64_t n_heads_, n_kv_heads_, head_dim_;
};

}  // namespace

std::shared_ptr<MixerImpl> make_cross_attention(const ModelConfig& config) {
  return std::make_shared<CrossAttentionImpl>(config);
}

}  // namespace loom
