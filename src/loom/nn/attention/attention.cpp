// Softmax attention (attention.h).
#include "loom/nn/attention/attention.h"

#include <cmath>
#include <limits>

#include "loom/nn/blocks.h"

namespace loom {

// Tensor parallel (tp_size T > 1): this rank's H / T query heads and K / T key/value heads (the
// r-th group of each), their rows of wqkv and columns of wo; the layer sums the T ranks' outputs,
// so only rank 0 adds wo's bias.
AttentionImpl::AttentionImpl(const ModelConfig& c, int64_t window)
    : n_heads_(c.n_heads / c.tp_size),
      n_kv_heads_(c.kv_heads() / c.tp_size),
      head_dim_(c.head_dim()),
      window_(window),
      causal_(c.causal()),
      bias_rank_(c.tp_rank == 0) {
  const int64_t qkv_dim = (n_heads_ + 2 * n_kv_heads_) * head_dim_;
  wqkv = register_linear("wqkv", c.d_model, qkv_dim, c.bias, kQuantizable);
  wo = register_linear("wo", n_heads_ * head_dim_, c.d_model, c.bias, kQuantizable | kResidualOutput);
  // NormFormer scales each head's output before the output projection (init 1).
  const int64_t q_rows = n_heads_ * head_dim_, kv_rows = n_kv_heads_ * head_dim_;
  declare_fused("wqkv.weight", {0, {q_rows, kv_rows, kv_rows}});
  if (c.bias) declare_fused("wqkv.bias", {0, {q_rows, kv_rows, kv_rows}});
  if (c.norm_placement == "normformer") head_scale = register_parameter("head_scale", torch::ones({n_heads_}));
  if (c.qk_norm) {
    const auto& norm = blocks().norms.get(c.norm, "model.qk_norm");
    q_norm = register_module("q_norm", norm(c, head_dim_));
    k_norm = register_module("k_norm", norm(c, head_dim_));
  }
  if (c.tp_size > 1) {
    const int64_t q = c.n_heads * head_dim_, kv = c.kv_heads() * head_dim_;
    declare_shard("wqkv.weight", {0, {q, kv, kv}});
    if (c.bias) declare_shard("wqkv.bias", {0, {q, kv, kv}}), declare("wo.bias", kPartialGradient);
    declare_shard("wo.weight", {1, {q}});
    for (const auto& p : named_parameters())
      if (p.key().rfind("q_norm.", 0) == 0 || p.key().rfind("k_norm.", 0) == 0) declare(p.key(), kPartialGradient);
  }
}

// x: [B, T, d_model] -> [B, T, d_model]
torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const MixerContext& ctx) {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t h = n_heads_, k_heads = n_kv_heads_, d = head_dim_, g = h / k_heads;
  auto qkv = wqkv(x).view({b, t, h + 2 * k_heads, d});
  auto q = qkv.narrow(2, 0, h);        // [B, T, H, D]
  auto k = qkv.narrow(2, h, k_heads);  // [B, T, K, D]
  auto v = qkv.narrow(2, h + k_heads, k_heads);
  if (q_norm) q = q_norm->forward(q), k = k_norm->forward(k);
  std::tie(q, k) = ctx.position->rotate(q, k, ctx.offset);
  k = k.transpose(1, 2);  // [B, K, T, D]
  v = v.transpose(1, 2);
  if (ctx.state != nullptr) {
    auto& keys = (*ctx.state)[kKeys];
    auto& values = (*ctx.state)[kValues];
    keys.narrow(2, ctx.offset, t).copy_(k);
    values.narrow(2, ctx.offset, t).copy_(v);
    k = keys.narrow(2, 0, ctx.offset + t).to(q.scalar_type());  // [B, K, S, D]
    v = values.narrow(2, 0, ctx.offset + t).to(q.scalar_type());
  }
  const int64_t s = k.size(2);
  // [B, T, H, D] -> [B*K, G*T, D]: the G query heads sharing a key/value head become rows.
  auto q_grouped = q.reshape({b, t, k_heads, g, d}).permute({0, 2, 3, 1, 4}).reshape({b * k_heads, g * t, d});
  auto k_t = k.reshape({b * k_heads, s, d}).transpose(1, 2);  // [B*K, D, S]
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  // The scale and the causal mask (as an additive 0 / -inf bias) ride on the score GEMM:
  // baddbmm instead of matmul, mul_, masked_fill saves two passes over the scores forward and
  // two backward: attention fwd+bwd 1.25x, bf16 train step 1.03x faster (2 threads).
  const bool masked = (causal_ && t > 1) || (window_ > 0 && s > window_);
  auto scores = masked ? torch::baddbmm(mask_bias(g, t, s, ctx.offset, q), q_grouped, k_t, 1.0, scale)
                       : torch::bmm(q_grouped, k_t).mul_(scale);  // [B*K, G*T, S]
  if (ctx.padding.defined()) {  // -inf at padding keys: [B, 1, 1, S] over [B, K, G*T, S]
    auto pad = torch::zeros({b, 1, 1, s}, scores.options())
                   .masked_fill(ctx.padding.view({b, 1, 1, s}), -std::numeric_limits<float>::infinity());
    scores = (scores.view({b, k_heads, g * t, s}) + pad).view({b * k_heads, g * t, s});
  }
  if (track_logits) {  // masked entries are -inf; the maximum runs over every forward while tracking
    auto m = scores.detach().max().to(torch::kFloat);
    max_logit = max_logit.defined() ? torch::maximum(max_logit, m) : m;
  }
  auto bias = ctx.position->attention_bias(h, t, s, ctx.offset);  // [H, T, S] or undefined
  if (bias.defined())
    scores = (scores.view({b, h, t, s}) + bias.to(scores.scalar_type())).view({b * k_heads, g * t, s});
  auto probs = torch::softmax(scores, -1);
  auto out = torch::bmm(probs, v.reshape({b * k_heads, s, d}))  // [B*K, G*T, D]
                 .view({b, k_heads, g, t, d})
                 .permute({0, 3, 1, 2, 4})  // [B, T, K, G, D]
                 .reshape({b, t, h * d});
  if (head_scale.defined())
    out = (out.view({b, t, h, d}) * head_scale.view({h, 1}).to(out.scalar_type())).view({b, t, h * d});
  if (!bias_rank_) return torch::linear(out, wo->weight);  // tensor parallel: rank 0 adds the bias
  return wo(out);
}

MixerState AttentionImpl::make_cache(int64_t batch, int64_t capacity, torch::TensorOptions options) {
  MixerState state;
  state.add(StateKind::kPerPosition, torch::zeros({batch, n_kv_heads_, capacity, head_dim_}, options));  // kKeys
  state.add(StateKind::kPerPosition, torch::zeros({batch, n_kv_heads_, capacity, head_dim_}, options));  // kValues
  return state;
}

torch::Tensor AttentionImpl::mask_bias(int64_t g, int64_t t, int64_t s, int64_t offset, const torch::Tensor& like) {
  if (!bias_.defined() || bias_.size(0) != g * t || bias_.size(1) != s || bias_offset_ != offset ||
      bias_.device() != like.device() || bias_.scalar_type() != like.scalar_type()) {
    auto ones = torch::ones({t, s}, torch::TensorOptions().dtype(torch::kBool).device(like.device()));
    auto mask = causal_ ? ones.triu(offset + 1)  // later keys
                        : torch::zeros_like(ones);
    if (window_ > 0) mask = mask.logical_or(ones.tril(offset - window_));              // keys window or more back
    if (window_ > 0 && !causal_) mask = mask.logical_or(ones.triu(offset + window_));  // or ahead
    bias_ =
        torch::zeros({t, s}, like.options()).masked_fill(mask, -std::numeric_limits<float>::infinity()).repeat({g, 1});
    bias_offset_ = offset;
  }
  return bias_;
}

void register_attention(Registry<MixerFactory>& r) {
  r.add(BlockInfo("attention",
                  "softmax attention (causal, or bidirectional in encoders); n_kv_heads: multi-head, grouped-query, "
                  "multi-query",
                  "Vaswani et al. 2017, Attention Is All You Need; Ainslie et al. 2023, GQA")
            .with_traits({"causal", "bidirectional", "qk", "scores", "tensor_parallel"})
            .fast_engine(true),
        [](const ModelConfig& c, int64_t) { return std::make_shared<AttentionImpl>(c, 0); });
}

}  // namespace loom
