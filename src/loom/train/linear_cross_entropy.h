// Output projection and mean next-token cross-entropy in one autograd node, without ever holding
// the full logits (or their fp32 copy, log-probabilities and gradient) in memory.
// Shapes: N = B * T rows, C = d_model, V = vocab_size.
#pragma once
#include <torch/torch.h>

namespace loom {

// mean_i -log softmax(hidden_i W^T)[targets_i]: the same value and gradients as
// lm_loss(linear(hidden, weight), targets) up to float rounding, where hidden [B, T, C] and
// weight [V, C] are first cast to `compute_dtype` (bf16 under autocast, as linear would be) and
// the softmax is taken in fp32. Every target must be a token id (no ignore index).
// z_loss > 0 adds z_loss * mean(log Z^2), log Z = logsumexp of a row's logits (the output-logit
// divergence fix of Wortsman et al. 2023, after PaLM); `stats` receives the mean cross-entropy
// and the mean log Z.
// label_smoothing = eps > 0 replaces each row's nll with fairseq's label-smoothed loss
// (1 - eps - e) * nll + e * sum_v -log p_v, e = eps / (V - 1) (Szegedy et al. 2016); the
// reported cross_entropy stays the plain nll.
struct LossStats {
  double cross_entropy = 0;
  double log_z = 0;
};
torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, at::ScalarType compute_dtype, double z_loss = 0.0,
                                   LossStats* stats = nullptr, double label_smoothing = 0.0);

}  // namespace loom
