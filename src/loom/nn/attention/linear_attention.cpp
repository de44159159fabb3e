// Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): softmax(q k^T)
// replaced by the kernel phi(q) phi(k)^T with phi(x) = elu(x) + 1, so that
//   out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),  S_i = sum_{j<=i} phi(k_j) v_j^T,  z_i = sum_{j<=i} phi(k_j)
// computed by running sums (cumsum over time): O(T D^2) instead of O(T^2 D), and O(1) state
// per token when decoding. Shapes: B batch, T time, H heads, D head_dim. Key/value heads are
// shared across query groups as in attention.cpp (n_kv_heads). RoPE, if chosen, rotates q and k
// before the feature map. In encoders the sums run over every non-padding position:
//   out_i = phi(q_i)^T S / (phi(q_i)^T z),  S = sum_j phi(k_j) v_j^T,  z = sum_j phi(k_j).
#include "loom/nn/mixer.h"

namespace loom {
namespace {

class LinearAttentionImpl : public MixerImpl {
 public:
  explicit LinearAttentionImpl(const ModelConfig& c)
      : n_heads_(c.n_heads), n_kv_heads_(c.kv_heads()), head_dim_(c.head_dim()), causal_(c.causal()) {
    const int64_t qkv_dim = (n_heads_ + 2 * n_kv_heads_) * head_dim_;
    wqkv = register_linear("wqkv", c.d_model, qkv_dim, c.bias, kQuantizable);
    wo = register_linear("wo", n_heads_ * head_dim_, c.d_model, c.bias, kQuantizable | kResidualOutput);
    const int64_t q_rows = n_heads_ * head_dim_, kv_rows = n_kv_heads_ * head_dim_;
    declare_fused("wqkv.weight", {0, {q_rows, kv_rows, kv_rows}});
    if (c.bias) declare_fused("wqkv.bias", {0, {q_rows, kv_rows, kv_rows}});
  }

  // x: [B, T, d_model] -> [B, T, d_model]
  torch::Tensor forward(const torch::Tensor& x, const MixerContext& ctx) override {
    const int64_t b = x.size(0), t = x.size(1), h = n_heads_, k_heads = n_kv_heads_, d = head_dim_;
    auto qkv = wqkv(x).view({b, t, h + 2 * k_heads, d});
    auto q = qkv.narrow(2, 0, h), k = qkv.narrow(2, h, k_heads), v = qkv.narrow(2, h + k_heads, k_heads);
    std::tie(q, k) = ctx.position->rotate(q, k, ctx.offset);
    const int64_t g = h / k_heads;
    auto phi = [](const torch::Tensor& z) { return torch::elu(z.to(torch::kFloat)) + 1; };
    auto fq = phi(q).transpose(1, 2);                                       // [B, H, T, D]
    auto fk = phi(k).repeat_interleave(g, 2).transpose(1, 2);               // [B, H, T, D]
    auto vv = v.to(torch::kFloat).repeat_interleave(g, 2).transpose(1, 2);  // [B, H, T, D]
    if (!causal_) {
      if (ctx.padding.defined()) fk = fk.masked_fill(ctx.padding.view({b, 1, t, 1}), 0.0);
      auto kv_all = fk.transpose(-2, -1).matmul(vv);  // S: [B, H, D, D]
      auto k_all = fk.sum(2, true);                   // z: [B, H, 1, D]
      auto out = (fq.matmul(kv_all) / (fq * k_all).sum(-1, true)).transpose(1, 2).reshape({b, t, h * d});
      return wo(out.to(x.scalar_type()));
    }
    auto kv = (fk.unsqueeze(-1) * vv.unsqueeze(-2)).cumsum(2);  // S_i: [B, H, T, D, D]
    auto ksum = fk.cumsum(2);                                   // z_i: [B, H, T, D]
    if (ctx.state != nullptr) {
      auto& kv_sum = (*ctx.state)[kKvSum];
      auto& k_sum = (*ctx.state)[kKSum];
      if (ctx.offset > 0) {
        kv = kv + kv_sum.unsqueeze(2);
        ksum = ksum + k_sum.unsqueeze(2);
      }
      kv_sum.copy_(kv.select(2, t - 1));
      k_sum.copy_(ksum.select(2, t - 1));
    }
    auto numerator = (fq.unsqueeze(-2).matmul(kv)).squeeze(-2);  // [B, H, T, D]
    auto denominator = (fq * ksum).sum(-1, true);                // [B, H, T, 1]
    auto out = (numerator / denominator).transpose(1, 2).reshape({b, t, h * d});
    return wo(out.to(x.scalar_type()));
  }

  // The running sums S [B, H, D, D] and z [B, H, D], kRecurrent, in fp32.
  MixerState make_cache(int64_t batch, int64_t, torch::TensorOptions options) override {
    MixerState state;
    state.add(StateKind::kRecurrent,
              torch::zeros({batch, n_heads_, head_dim_, head_dim_}, options.dtype(torch::kFloat)));
    state.add(StateKind::kRecurrent, torch::zeros({batch, n_heads_, head_dim_}, options.dtype(torch::kFloat)));
    return state;
  }

  torch::nn::Linear wqkv{nullptr}, wo{nullptr};

 private:
  static constexpr size_t kKvSum = 0, kKSum = 1;  // indices in the MixerState
  int64_t n_heads_, n_kv_heads_, head_dim_;
  bool causal_;
};

}  // namespace

void register_linear_attention(Registry<MixerFactory>& r) {
  r.add(BlockInfo(
            "linear_attention", "linear attention, elu+1 feature map; causal by running sums (O(1) decoding state)",
            "Katharopoulos et al. 2020, Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention")
            .with_traits({"causal", "bidirectional", "qk"})
            .fast_engine(false),
        [](const ModelConfig& c, int64_t) { return std::make_shared<LinearAttentionImpl>(c); });
}

}  // namespace loom
