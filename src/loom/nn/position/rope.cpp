// Rotary position embeddings (Su et al. 2021, RoFormer) in the two pairings found in checkpoints:
// `rope` (rotate half, as LLaMA's Hugging Face checkpoints) and `rope_adjacent` (adjacent pairs, as
// the paper and llama.cpp): one module with the pairing as its one setting, so both names are
// registered here.
#include "loom/nn/position/position.h"

namespace loom {
namespace {

// Rotates pairs of q and k coordinates by angle p * theta^(-2i/head_dim). Two pairings exist in
// the wild: "rotate half" pairs (x_i, x_{i + head_dim/2}) (GPT-NeoX, LLaMA's HF checkpoints);
// "adjacent" pairs (x_{2i}, x_{2i+1}) (the RoFormer paper, Meta's original LLaMA, llama.cpp).
// They are the same model up to a permutation of each head's q/k rows.
enum class RopePairing { kHalf, kAdjacent };

class RotaryPositionImpl : public PositionImpl {
 public:
  RotaryPositionImpl(const ModelConfig& c, RopePairing pairing) : max_seq_len_(c.max_seq_len), pairing_(pairing) {
    const int64_t half = c.head_dim() / 2;
    auto inv_freq = torch::pow(c.rope_theta, -torch::arange(0, half, torch::kDouble) / half);
    auto angles = torch::outer(torch::arange(c.max_seq_len, torch::kDouble), inv_freq);  // [P, half]
    cos_ = angles.cos().to(torch::kFloat);
    sin_ = angles.sin().to(torch::kFloat);
  }
  std::pair<torch::Tensor, torch::Tensor> rotate(const torch::Tensor& q, const torch::Tensor& k,
                                                 int64_t offset) override {
    const int64_t t = q.size(1);
    check_position_range(offset, t, max_seq_len_);
    if (cos_.device() != q.device()) cos_ = cos_.to(q.device()), sin_ = sin_.to(q.device());
    auto cos = cos_.narrow(0, offset, t).unsqueeze(1).to(q.scalar_type());  // [T, 1, half]
    auto sin = sin_.narrow(0, offset, t).unsqueeze(1).to(q.scalar_type());
    return {apply(q, cos, sin), apply(k, cos, sin)};
  }

 private:
  // x: [B, T, heads, head_dim]; cos, sin: [T, 1, half]
  torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) const {
    if (pairing_ == RopePairing::kHalf) {
      auto halves = x.chunk(2, -1);  // x1, x2: [B, T, heads, half]
      const auto& x1 = halves[0];
      const auto& x2 = halves[1];
      return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
    }
    auto pairs = x.unflatten(-1, {x.size(-1) / 2, 2});  // [B, T, heads, half, 2]
    auto x1 = pairs.select(-1, 0), x2 = pairs.select(-1, 1);
    return torch::stack({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1).flatten(-2);
  }
  int64_t max_seq_len_;
  RopePairing pairing_;
  torch::Tensor cos_, sin_;  // [max_seq_len, head_dim / 2]
};

}  // namespace

void register_rope(Registry<PositionFactory>& r) {
  r.add(BlockInfo("rope", "rotary embeddings on queries and keys, rotate-half pairing (LLaMA/HF)",
                  "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding")
            .with_traits({"qk"})
            .fast_engine(true),
        [](const ModelConfig& c) { return std::make_shared<RotaryPositionImpl>(c, RopePairing::kHalf); });
  r.add(BlockInfo("rope_adjacent", "rotary embeddings on queries and keys, adjacent-pair pairing (RoFormer, llama.cpp)",
                  "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding")
            .with_traits({"qk"})
            .fast_engine(true),
        [](const ModelConfig& c) { return std::make_shared<RotaryPositionImpl>(c, RopePairing::kAdjacent); });
}

}  // namespace loom
