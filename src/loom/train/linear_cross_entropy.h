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
torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, at::ScalarType compute_dtype);

}  // namespace loom
