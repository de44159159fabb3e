// Learned absolute position embeddings (GPT-2).
#include "loom/nn/position/position.h"

namespace loom {
namespace {

class LearnedPositionImpl : public PositionImpl {
 public:
  explicit LearnedPositionImpl(const ModelConfig& c) : max_seq_len_(c.max_seq_len) {
    weight = register_parameter("weight", torch::zeros({c.max_seq_len, c.d_model}));
    declare("weight", kInitNormal | kNoDecay);  // a table like the token embedding
  }
  torch::Tensor embed(const torch::Tensor& x, int64_t offset) override {
    check_position_range(offset, x.size(1), max_seq_len_);
    return x + weight.narrow(0, offset, x.size(1));  // [B, T, d] + [T, d]
  }
  torch::Tensor weight;  // [max_seq_len, d_model]

 private:
  int64_t max_seq_len_;
};

}  // namespace

void register_learned(Registry<PositionFactory>& r) {
  r.add(BlockInfo("learned", "learned absolute position embeddings added to the tokens",
                  "Radford et al. 2019, Language Models are Unsupervised Multitask Learners (GPT-2)")
            .fast_engine(true),
        [](const ModelConfig& c) { return std::make_shared<LearnedPositionImpl>(c); });
}

}  // namespace loom
