// The selective scan of Mamba (Gu & Dao 2023, RESEARCH.md §2), in fp32:
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   y_t = <h_t, C_t> + D * u_t
// Shapes: B batch, T time, Di inner channels, N state size.
//   u, delta: [B, T, Di]; A: [Di, N]; Bm, Cm: [B, T, N]; D: [Di]; h0: [B, Di, N] or undefined (zeros)
//   -> y: [B, T, Di], h_T: [B, Di, N]
// Two implementations with one contract: the plain recurrent reference (libtorch ops, one step
// at a time, differentiated by autograd) and a fused CPU kernel with a hand-written backward
// (one pass over time per channel, no per-step tensors). Tests check them against each other,
// outputs and gradients; bench/mamba_scan.cpp measures the speed-up.
#pragma once
#include <utility>

#include <torch/torch.h>

namespace loom {

std::pair<torch::Tensor, torch::Tensor> selective_scan_reference(const torch::Tensor& u, const torch::Tensor& delta,
                                                                 const torch::Tensor& A, const torch::Tensor& Bm,
                                                                 const torch::Tensor& Cm, const torch::Tensor& D,
                                                                 const torch::Tensor& h0);

// The fused kernel. h0 receives no gradient (training starts every sequence from zeros).
std::pair<torch::Tensor, torch::Tensor> selective_scan(const torch::Tensor& u, const torch::Tensor& delta,
                                                       const torch::Tensor& A, const torch::Tensor& Bm,
                                                       const torch::Tensor& Cm, const torch::Tensor& D,
                                                       const torch::Tensor& h0);

}  // namespace loom
