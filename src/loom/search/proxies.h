// Training-free proxies against trained loss (`loom search proxies`): for N architectures drawn
// from a search space, each proxy computed at initialization, and the loss each reaches when
// actually trained briefly from scratch; then the rank correlation (Kendall's tau-b and
// Spearman's rho) of every proxy with that loss. Proxies:
//   parameters             all parameters (LiteTransformerSearch: hard to beat on decoders)
//   decoder_parameters     without the embedding and output tables
//   flops                  forward FLOPs per token: 2 x the matrix parameters a token meets (MoE:
//                          top_k of n_experts) + the attention scores at the mean position
//   hidden_covariance      Serianni & Kalita 2023: R = the correlation matrix of the final hidden
//                          states of a minibatch's sequences, -sum(log(l + k) + 1 / (l + k)) over
//                          its eigenvalues l, k = 1e-5
//   synflow                Tanaka et al. 2020: sum |theta| x d(sum of logits)/d|theta| with every
//                          weight replaced by its absolute value, an all-zeros token input, fp64
//   grad_norm              the global gradient norm of the training loss on one batch at init
// A proxy predicts well when its rank correlation with the loss is strongly negative (larger
// proxy, lower loss). Rows are appended to out_dir/proxies.jsonl as they finish, so a rerun with
// the same out_dir continues; the summary is proxies.md, proxies.json and proxies.svg.
#pragma once
#include <string>
#include <vector>

#include "loom/search/space.h"

namespace loom {

struct ProxyRow {
  Arch arch;
  double parameters = 0, decoder_parameters = 0, flops = 0, hidden_covariance = 0, synflow = 0, grad_norm = 0;
  double loss = 0;     // validation loss after proxies.steps steps of training
  double seconds = 0;  // proxies and training of this architecture
};

struct ProxyCorrelation {
  std::string proxy;
  double kendall_tau = 0, spearman_rho = 0;
};

struct ProxiesOptions {
  int64_t n = 50;
  std::string out_dir;
};

struct ProxiesResult {
  std::vector<ProxyRow> rows;
  std::vector<ProxyCorrelation> correlations;
  int64_t trained_now = 0;
};

ProxiesResult run_proxies(const SearchSpace& space, const ProxiesOptions& options);

// The proxies of one architecture at initialization (loss and seconds left 0).
ProxyRow compute_proxies(const SearchSpace& space, const Arch& arch, const torch::Tensor& inputs,
                         const torch::Tensor& targets);

// Kendall's tau-b (ties counted as scipy.stats.kendalltau does) and Spearman's rho (Pearson of
// average ranks); NaN with fewer than 2 values or a constant input.
double kendall_tau(const std::vector<double>& a, const std::vector<double>& b);
double spearman_rho(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace loom
