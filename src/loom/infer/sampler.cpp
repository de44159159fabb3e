#include "loom/infer/sampler.h"

#include "loom/core/error.h"

namespace loom {

Sampler::Sampler(SamplingOptions options) : options_(options), rng_(options.seed) {
  if (options_.temperature < 0) fail("temperature must be >= 0, got {}", options_.temperature);
  if (options_.top_k < 0) fail("top-k must be >= 0, got {}", options_.top_k);
  if (!(options_.top_p > 0 && options_.top_p <= 1)) fail("top-p must be in (0, 1], got {}", options_.top_p);
}

int64_t Sampler::operator()(const torch::Tensor& logits) {
  auto scores = logits.detach().to(torch::kFloat).reshape({-1});
  if (options_.temperature == 0) return scores.argmax().item<int64_t>();
  // Sort once; top-k and top-p both cut the sorted list.
  auto [sorted, order] = (scores / options_.temperature).sort(/*dim=*/-1, /*descending=*/true);
  int64_t keep = sorted.size(0);
  if (options_.top_k > 0) keep = std::min(keep, options_.top_k);
  auto probs = torch::softmax(sorted.narrow(0, 0, keep), -1);
  if (options_.top_p < 1.0) {
    // Smallest prefix whose mass reaches top_p (always at least one token).
    auto cumulative = probs.cumsum(0);
    const int64_t below = (cumulative < options_.top_p).sum().item<int64_t>();
    keep = std::min(keep, below + 1);
    probs = probs.narrow(0, 0, keep);
  }
  auto p = probs.contiguous();
  const float* data = p.data_ptr<float>();
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += data[i];
  double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  int64_t chosen = keep - 1;
  for (int64_t i = 0; i < keep; ++i) {
    u -= data[i];
    if (u <= 0) {
      chosen = i;
      break;
    }
  }
  return order[chosen].item<int64_t>();
}

}  // namespace loom
