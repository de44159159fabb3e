// The position schemes: learned absolute (GPT-2), sinusoidal (Vaswani et al. 2017), RoPE
// (Su et al. 2021, "rotate half" pairing as in LLaMA's HF checkpoints), ALiBi (Press et al. 2022)
// and none (Haviv et al. 2022: causal LMs learn positions without any).
#include <cmath>

#include "loom/core/error.h"
#include "loom/nn/position/position.h"

namespace loom {
namespace {

void check_range(int64_t offset, int64_t t, int64_t max_seq_len) {
  if (offset + t > max_seq_len)
    fail("positions {}..{} exceed the model's context of {} tokens", offset, offset + t - 1,
         max_seq_len);
}

class LearnedPositionImpl : public PositionImpl {
 public:
  explicit LearnedPositionImpl(const ModelConfig& c) : max_seq_len_(c.max_seq_len) {
    weight = register_parameter("weight", torch::zeros({c.max_seq_len, c.d_model}));
  }
  torch::Tensor embed(const torch::Tensor& x, int64_t offset) override {
    check_range(offset, x.size(1), max_seq_len_);
    return x + weight.narrow(0, offset, x.size(1));  // [B, T, d] + [T, d]
  }
  torch::Tensor weight;  // [max_seq_len, d_model]

 private:
  int64_t max_seq_len_;
};

// PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...).
class SinusoidalPositionImpl : public PositionImpl {
 public:
  explicit SinusoidalPositionImpl(const ModelConfig& c) : max_seq_len_(c.max_seq_len) {
    auto position = torch::arange(c.max_seq_len, torch::kFloat).unsqueeze(1);       // [P, 1]
    auto freq = torch::exp(torch::arange(0, c.d_model, 2, torch::kFloat) *
                           (-std::log(10000.0) / static_cast<double>(c.d_model)));  // [d/2]
    table_ = torch::zeros({c.max_seq_len, c.d_model});
    table_.index_put_({torch::indexing::Slice(), torch::indexing::Slice(0, torch::indexing::None, 2)},
                      torch::sin(position * freq));
    table_.index_put_({torch::indexing::Slice(), torch::indexing::Slice(1, torch::indexing::None, 2)},
                      torch::cos(position * freq).narrow(1, 0, c.d_model / 2));
  }
  torch::Tensor embed(const torch::Tensor& x, int64_t offset) override {
    check_range(offset, x.size(1), max_seq_len_);
    if (table_.device() != x.device()) table_ = table_.to(x.device());
    return x + table_.narrow(0, offset, x.size(1));
  }

 private:
  int64_t max_seq_len_;
  torch::Tensor table_;  // [max_seq_len, d_model], a constant: not a parameter or saved buffer
};

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
    check_range(offset, t, max_seq_len_);
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

// Adds -m_h * (i - j) to the score of query i and key j; slopes m_h are a geometric sequence
// (the paper's rule, with its interpolation for head counts that are not powers of two).
class AlibiPositionImpl : public PositionImpl {
 public:
  explicit AlibiPositionImpl(const ModelConfig& c) : slopes_(slopes(c.n_heads)), causal_(c.causal()) {}
  torch::Tensor attention_bias(int64_t n_heads, int64_t t, int64_t s, int64_t offset) override {
    auto i = torch::arange(offset, offset + t, torch::kFloat).unsqueeze(1);  // [T, 1]
    auto j = torch::arange(s, torch::kFloat).unsqueeze(0);                   // [1, S]
    // Causal: later keys are masked anyway; bidirectional: both directions are penalized.
    auto distance = causal_ ? (i - j).clamp_min(0) : (i - j).abs();          // [T, S]
    return -slopes_.view({n_heads, 1, 1}) * distance;                        // [H, T, S]
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

class NoPositionImpl : public PositionImpl {
 public:
  explicit NoPositionImpl(const ModelConfig&) {}
};

template <class Impl>
PositionFactory make() {
  return [](const ModelConfig& c) { return std::make_shared<Impl>(c); };
}

}  // namespace

void register_positions(Registry<PositionFactory>& r) {
  r.add({"", "learned", "learned absolute position embeddings added to the tokens",
         "Radford et al. 2019, Language Models are Unsupervised Multitask Learners (GPT-2)"},
        make<LearnedPositionImpl>());
  r.add({"", "sinusoidal", "fixed sinusoidal position encodings added to the tokens",
         "Vaswani et al. 2017, Attention Is All You Need"},
        make<SinusoidalPositionImpl>());
  r.add({"", "rope", "rotary embeddings on queries and keys, rotate-half pairing (LLaMA/HF)",
         "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding", {"qk"}},
        [](const ModelConfig& c) { return std::make_shared<RotaryPositionImpl>(c, RopePairing::kHalf); });
  r.add({"", "rope_adjacent", "rotary embeddings on queries and keys, adjacent-pair pairing (RoFormer, llama.cpp)",
         "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding", {"qk"}},
        [](const ModelConfig& c) { return std::make_shared<RotaryPositionImpl>(c, RopePairing::kAdjacent); });
  r.add({"", "alibi", "linear distance penalties on attention scores, per-head slopes (encoders: |i - j|)",
         "Press et al. 2022, Train Short, Test Long (ALiBi)", {"scores"}},
        make<AlibiPositionImpl>());
  r.add({"", "none", "no position information (decoders still infer order from causal masking)",
         "Haviv et al. 2022, Transformer Language Models without Positional Encodings Still Learn "
         "Positional Information"},
        make<NoPositionImpl>());
}

}  // namespace loom
