// Next-token choice from logits: greedy (temperature 0) or sampling with temperature, top-k
// and top-p (nucleus, Holtzman et al. 2020) filtering, from a seeded generator.
#pragma once
#include <cstdint>
#include <random>

#include <torch/torch.h>

namespace loom {

struct SamplingOptions {
  double temperature = 0.8;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplingOptions options);
  // logits: [V] -> a token id.
  int64_t operator()(const torch::Tensor& logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
};

}  // namespace loom
