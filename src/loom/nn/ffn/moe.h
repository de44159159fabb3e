// The options of `moe` (mixture of experts, moe.cpp): recipe keys under model., registered with
// the block. Torch-free: ModelConfig (nn/config.h) holds it.
#pragma once
#include <cstdint>
#include <string>

namespace loom {

struct MoeOptions {
  int64_t n_experts = 8;
  int64_t top_k = 2;
  double capacity_factor = 1.25;  // <= 0: no capacity limit
  double moe_aux_weight = 0.01;

  template <class V>
  void visit(V& v) {
    v("n_experts", n_experts, "experts per MoE layer (ffn: moe)");
    v("top_k", top_k, "experts each token is routed to (ffn: moe)");
    v("capacity_factor", capacity_factor, "expert capacity = factor * tokens * top_k / n_experts; <= 0 = unlimited");
    v("moe_aux_weight", moe_aux_weight, "weight of the load-balancing loss (ffn: moe)");
  }
  void validate(const std::string& source) const;
};

}  // namespace loom
