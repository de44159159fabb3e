// Fixed sinusoidal position encodings (Vaswani et al. 2017).
#include "loom/nn/position/position.h"

#include <cmath>

namespace loom {
namespace {

// PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...).
class SinusoidalPositionImpl : public PositionImpl {
 public:
  explicit SinusoidalPositionImpl(const ModelConfig& c) : max_seq_len_(c.max_seq_len) {
    auto position = torch::arange(c.max_seq_len, torch::kFloat).unsqueeze(1);  // [P, 1]
    auto freq = torch::exp(torch::arange(0, c.d_model, 2, torch::kFloat) *
                           (-std::log(10000.0) / static_cast<double>(c.d_model)));  // [d/2]
    table_ = torch::zeros({c.max_seq_len, c.d_model});
    table_.index_put_({torch::indexing::Slice(), torch::indexing::Slice(0, torch::indexing::None, 2)},
                      torch::sin(position * freq));
    table_.index_put_({torch::indexing::Slice(), torch::indexing::Slice(1, torch::indexing::None, 2)},
                      torch::cos(position * freq).narrow(1, 0, c.d_model / 2));
  }
  torch::Tensor embed(const torch::Tensor& x, int64_t offset) override {
    check_position_range(offset, x.size(1), max_seq_len_);
    if (table_.device() != x.device()) table_ = table_.to(x.device());
    return x + table_.narrow(0, offset, x.size(1));
  }

 private:
  int64_t max_seq_len_;
  torch::Tensor table_;  // [max_seq_len, d_model], a constant: not a parameter or saved buffer
};

}  // namespace

void register_sinusoidal(Registry<PositionFactory>& r) {
  r.add(BlockInfo("sinusoidal", "fixed sinusoidal position encodings added to the tokens",
                  "Vaswani et al. 2017, Attention Is All You Need")
            .fast_engine(true),
        [](const ModelConfig& c) { return std::make_shared<SinusoidalPositionImpl>(c); });
}

}  // namespace loom
