// The reference is lm_loss(linear(h, W), targets) (train_step.cpp): logits [N, V] in the compute
// dtype, cast to fp32, log_softmax, nll; backward writes fp32 [N, V] tensors three more times.
// Here the forward visits the logits a block of rows at a time while they are in cache, and
// writes their gradient, (softmax - onehot) / N, straight into one [N, V] tensor of the compute
// dtype, which is all the backward needs besides h and W.
#include "loom/train/linear_cross_entropy.h"

#include <algorithm>

namespace loom {
namespace {

// Rows per logits block (chosen, not tuned): a [256, V] GEMM is still large; the fp32
// log-softmax of 32 rows is 1 MB at V = 8192, about one core's L2.
constexpr int64_t kGemmRows = 256;
constexpr int64_t kSoftmaxRows = 32;

class LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
 public:
  // hidden [N, C], weight [V, C] (same dtype), targets [N] int64 -> {scalar fp32 objective
  // (cross-entropy + z_loss * log Z^2), mean cross-entropy, mean log Z}; the last two carry no
  // gradient. needs_grad: whether a backward will follow (the context cannot tell in no-grad mode).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                                                const torch::Tensor& weight, const torch::Tensor& targets,
                                                bool needs_grad, double z_loss, double smoothing) {
    const int64_t n = hidden.size(0), v = weight.size(0);
    auto losses = torch::empty({n}, hidden.options().dtype(torch::kFloat));
    auto smoothed = smoothing > 0 ? torch::empty({n}, hidden.options().dtype(torch::kFloat)) : torch::Tensor();
    const double e = smoothing / static_cast<double>(v - 1), on_target = 1.0 - smoothing - e;
    auto log_z = torch::empty({n}, hidden.options().dtype(torch::kFloat));
    torch::Tensor grad_logits = needs_grad ? torch::empty({n, v}, hidden.options()) : torch::Tensor();
    const auto weight_t = weight.t();
    for (int64_t r0 = 0; r0 < n; r0 += kGemmRows) {
      const int64_t rows = std::min(kGemmRows, n - r0);
      auto logits = torch::mm(hidden.narrow(0, r0, rows), weight_t);  // [rows, V]
      for (int64_t s0 = 0; s0 < rows; s0 += kSoftmaxRows) {
        const int64_t sub = std::min(kSoftmaxRows, rows - s0);
        auto target = targets.narrow(0, r0 + s0, sub).unsqueeze(1);  // [sub, 1]
        auto block = logits.narrow(0, s0, sub).to(torch::kFloat);    // [sub, V]
        auto log_probs = torch::log_softmax(block, 1);               // [sub, V]
        auto target_log_prob = log_probs.gather(1, target);          // [sub, 1]
        // log Z = logit - log p at any token; the target's is at hand (no extra pass over V).
        auto lse = block.gather(1, target) - target_log_prob;  // [sub, 1]
        log_z.narrow(0, r0 + s0, sub).copy_(lse.squeeze(1));
        auto block_losses = losses.narrow(0, r0 + s0, sub);
        torch::neg_out(block_losses, target_log_prob.squeeze(1));
        if (smoothing > 0)  // (1 - eps - e) nll + e sum_v -log p_v
          smoothed.narrow(0, r0 + s0, sub).copy_(block_losses * on_target - log_probs.sum(1) * e);
        if (!needs_grad) continue;
        // d loss / d logits = (softmax * (1 + 2 z log Z) - onehot(target)) / N
        auto probs = log_probs.exp_();
        if (z_loss != 0) probs.mul_(lse * (2 * z_loss) + 1);
        // Smoothed: softmax - q, q = (1 - eps - e) at the target + e everywhere (sums to 1).
        if (smoothing > 0) probs.sub_(e);
        probs.scatter_add_(
            1, target, torch::full({sub, 1}, static_cast<float>(smoothing > 0 ? -on_target : -1.0), probs.options()));
        auto block_grad = grad_logits.narrow(0, r0 + s0, sub);
        // A 0-dim tensor, not a Scalar: libtorch 2.x sends mul_out(out, Tensor, Scalar) to the
        // generated mul.Scalar_out, which rejects a bf16 out for fp32 probs; mul.out casts.
        torch::mul_out(block_grad, probs, torch::scalar_tensor(1.0 / static_cast<double>(n), probs.options()));
      }
    }
    ctx->save_for_backward({hidden, weight, grad_logits});
    auto cross_entropy = losses.mean();
    auto mean_log_z = log_z.mean();
    auto objective = smoothing > 0 ? smoothed.mean() : cross_entropy.clone();
    if (z_loss != 0) objective = objective + z_loss * log_z.pow(2).mean();
    ctx->mark_non_differentiable({cross_entropy, mean_log_z});
    return {objective, cross_entropy, mean_log_z};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_output) {
    auto saved = ctx->get_saved_variables();
    const auto& hidden = saved[0];
    const auto& weight = saved[1];
    auto grad_logits = saved[2];  // [N, V]; not scaled in place: a retained graph reuses it
    const auto& scale = grad_output[0];
    if (scale.item<double>() != 1.0) grad_logits = grad_logits * scale.to(grad_logits.scalar_type());
    torch::Tensor grad_hidden, grad_weight;
    if (ctx->needs_input_grad(0)) grad_hidden = torch::mm(grad_logits, weight);      // [N, C]
    if (ctx->needs_input_grad(1)) grad_weight = torch::mm(grad_logits.t(), hidden);  // [V, C]
    return {grad_hidden, grad_weight, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, at::ScalarType compute_dtype, double z_loss,
                                   LossStats* stats, double label_smoothing) {
  TORCH_CHECK(hidden.size(-1) == weight.size(1), "hidden and weight disagree on d_model");
  auto flat_targets = targets.reshape({-1});
  TORCH_CHECK(flat_targets.numel() == hidden.numel() / hidden.size(-1), "one target per row");
  TORCH_CHECK(flat_targets.numel() == 0 ||
                  (flat_targets.min().item<int64_t>() >= 0 && flat_targets.max().item<int64_t>() < weight.size(0)),
              "targets must be token ids in [0, vocab_size)");
  const bool needs_grad = torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  auto out = LinearCrossEntropy::apply(hidden.reshape({-1, hidden.size(-1)}).to(compute_dtype),
                                       weight.to(compute_dtype), flat_targets, needs_grad, z_loss, label_smoothing);
  if (stats != nullptr) {
    stats->cross_entropy = out[1].item<double>();
    stats->log_z = out[2].item<double>();
  }
  return out[0];
}

}  // namespace loom
