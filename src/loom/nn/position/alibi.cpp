// ALiBi (Press et al. 2022, "Train Short, Test Long").
#include "loom/nn/position/position.h"

#include <cmath>
#include <vector>

namespace loom {
namespace {

// Adds -m_h * (i - j) to the score of query i and key j; slopes m_h are a geometric sequence
// (the paper's rule, with its interpolation for head counts that are not powers of two).
class AlibiPositionImpl : public PositionImpl {
 public:
  explicit AlibiPositionImpl(const ModelConfig& c) : slopes_(slopes(c.n_heads)), causal_(c.causal()) {}
  torch::Tensor attention_bias(int64_t n_heads, int64_t t, int64_t s, int64_t offset) override {
    auto i = torch::arange(offset, offset + t, torch::kFloat).unsqueeze(1);  // [T, 1]
    auto j = torch::arange(s, torch::kFloat).unsqueeze(0);                   // [1, S]
    // Causal: later keys are masked anyway; bidirectional: both directions are penalized.
    auto distance = causal_ ? (i - j).clamp_min(0) : (i - j).abs();  // [T, S]
    // A layer with its own head count (model.layer_heads) gets that count's slopes.
    const auto m = n_heads == slopes_.size(0) ? slopes_ : slopes(n_heads);
    return -m.view({n_heads, 1, 1}) * distance;  // [H, T, S]
  }
  static torch::Tensor slopes(int64_t n_heads) {
    auto power_of_two = [](int64_t n) {
      std::vector<float> out;
      const double start = std::pow(2.0, -8.0 / n);
      for (int64_t h = 0; h < n; ++h) out.push_back(static_cast<float>(std::pow(start, h + 1)));
      return out;
    };
    const int64_t closest = int64_t{1} << static_cast<int64_t>(std::floor(std::log2(n_heads)));
    auto out = power_of_two(closest);
    if (closest < n_heads) {
      auto extra = power_of_two(2 * closest);
      for (int64_t h = 0; h < n_heads - closest; ++h) out.push_back(extra[2 * h]);
    }
    return torch::tensor(out);
  }

 private:
  torch::Tensor slopes_;  // [H]
  bool causal_;
};

}  // namespace

void register_alibi(Registry<PositionFactory>& r) {
  r.add(BlockInfo("alibi", "linear distance penalties on attention scores, per-head slopes (encoders: |i - j|)",
                  "Press et al. 2022, Train Short, Test Long (ALiBi)")
            .with_traits({"scores"})
            .fast_engine(false),
        [](const ModelConfig& c) { return std::make_shared<AlibiPositionImpl>(c); });
}

}  // namespace loom
