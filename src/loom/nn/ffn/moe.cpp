// Mixture of experts in place of the dense FFN (Shazeer et al. 2017; Switch Transformer, Fedus
// et al. 2022; Mixtral, Jiang et al. 2024). A linear router scores n_experts SwiGLU experts per
// token; each token goes to its top_k experts, weighted by the router's probabilities
// (renormalized over the chosen experts when top_k > 1, as Mixtral; the raw probability when
// top_k = 1, as Switch, so the router still gets a gradient). An expert takes at most
// capacity = ceil(capacity_factor * tokens * top_k / n_experts) tokens, first come first served
// in token order; overflow assignments are dropped (the residual carries the token on).
// The load-balancing loss is Switch's: n_experts * sum_e f_e * P_e, with f_e the fraction of
// assignments sent to expert e and P_e its mean router probability.
// Shapes: N tokens (B * T), E experts, k = top_k.
#include "loom/nn/ffn/moe.h"

#include <cmath>

#include "loom/core/error.h"
#include "loom/nn/ffn/ffn.h"

namespace loom {
namespace {

class MoeImpl : public FfnImpl {
 public:
  explicit MoeImpl(const ModelConfig& c)
      : n_experts_(c.moe.n_experts), top_k_(c.moe.top_k), capacity_factor_(c.moe.capacity_factor), d_ff_(c.d_ff) {
    router = register_module("router", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, n_experts_).bias(false)));
    w_in = register_parameter("w_in", torch::empty({n_experts_, 2 * c.d_ff, c.d_model}));  // [E, 2 d_ff, d]: [gate; up]
    w_out = register_parameter("w_out", torch::empty({n_experts_, c.d_model, c.d_ff}));    // [E, d, d_ff]
    // Stacked expert matrices: the model draws them as it draws linear layers.
    declare("w_in", kInitNormal);
    declare("w_out", kInitNormal | kResidualOutput);
    declare_fused("w_in", {1, {c.d_ff, c.d_ff}});
    torch::NoGradGuard no_grad;
    w_in.normal_(0.0, c.init_std);  // the model re-initializes these with its own rule
    w_out.normal_(0.0, c.init_std);
  }

  // x: [B, T, d_model] -> [B, T, d_model]
  torch::Tensor forward(const torch::Tensor& x) override {
    auto flat = x.reshape({-1, x.size(-1)});  // [N, d]
    const int64_t n = flat.size(0);
    auto probs = torch::softmax(router(flat).to(torch::kFloat), -1);  // [N, E]
    auto [weights, experts] = probs.topk(top_k_, -1);                 // [N, k] each
    if (top_k_ > 1) weights = weights / weights.sum(-1, true);
    const int64_t capacity =
        capacity_factor_ > 0
            ? static_cast<int64_t>(std::ceil(capacity_factor_ * static_cast<double>(n * top_k_) / n_experts_))
            : n * top_k_;
    auto assigned = experts.reshape({-1});  // [N k], token-major
    auto assigned_weight = weights.reshape({-1});
    auto token_of = torch::arange(n, torch::kLong).repeat_interleave(top_k_);  // [N k]
    auto out = torch::zeros_like(flat);
    for (int64_t e = 0; e < n_experts_; ++e) {
      auto slots = (assigned == e).nonzero().reshape({-1});
      if (slots.numel() == 0) continue;
      if (slots.numel() > capacity) slots = slots.narrow(0, 0, capacity);
      auto tokens = token_of.index_select(0, slots);
      auto gate_up = torch::nn::functional::linear(flat.index_select(0, tokens), w_in[e]).chunk(2, -1);
      auto y = torch::nn::functional::linear(torch::silu(gate_up[0]) * gate_up[1], w_out[e]);  // [n_e, d]
      auto weighted = y.to(out.scalar_type()) * assigned_weight.index_select(0, slots).unsqueeze(1);
      out = out.index_add(0, tokens, weighted);
    }
    auto fraction = torch::one_hot(assigned, n_experts_).to(torch::kFloat).mean(0);  // f_e: [E]
    aux_ = n_experts_ * (fraction * probs.mean(0)).sum();
    return out.view(x.sizes());
  }

  torch::Tensor aux_loss() const override { return aux_; }

  torch::nn::Linear router{nullptr};
  torch::Tensor w_in, w_out;

 private:
  int64_t n_experts_, top_k_;
  double capacity_factor_;
  int64_t d_ff_;
  torch::Tensor aux_;
};

}  // namespace

void MoeOptions::validate(const std::string& source) const {
  if (n_experts <= 0) fail("{}: model.n_experts must be positive, got {}", source, n_experts);
  if (top_k <= 0) fail("{}: model.top_k must be positive, got {}", source, top_k);
  if (top_k > n_experts) fail("{}: model.top_k ({}) exceeds model.n_experts ({})", source, top_k, n_experts);
  if (moe_aux_weight < 0) fail("{}: model.moe_aux_weight must be >= 0, got {}", source, moe_aux_weight);
}

void register_moe(Registry<FfnFactory>& r) {
  r.add(BlockInfo("moe", "mixture of SwiGLU experts: top-k router, capacity factor, load-balancing loss",
                  "Fedus et al. 2022, Switch Transformers; Jiang et al. 2024, Mixtral of Experts")
            .with_options<MoeOptions>()
            .fast_engine(false),
        [](const ModelConfig& c, int64_t) { return std::make_shared<MoeImpl>(c); });
}

}  // namespace loom
