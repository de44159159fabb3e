// DyT, dynamic tanh (Zhu et al. 2025, "Transformers without Normalization").
#include "loom/nn/norm/norm.h"

namespace loom {
namespace {

// Dynamic tanh, a normalization-free drop-in for a norm layer: y = weight * tanh(alpha x) + bias,
// with one learnable scalar alpha (initialized to 0.5, the paper's default).
class DyTImpl : public NormImpl {
 public:
  DyTImpl(const ModelConfig& c, int64_t dim) {
    alpha = register_parameter("alpha", torch::full({1}, 0.5));
    weight = register_parameter("weight", torch::ones({dim}));
    if (c.bias) bias = register_parameter("bias", torch::zeros({dim}));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = torch::tanh(alpha * x) * weight;
    return bias.defined() ? y + bias : y;
  }
  torch::Tensor alpha, weight, bias;  // [1], [dim], [dim]
};

}  // namespace

void register_dyt(Registry<NormFactory>& r) {
  r.add(BlockInfo("dyt", "dynamic tanh: weight * tanh(alpha x) + bias, no statistics",
                  "Zhu et al. 2025, Transformers without Normalization")
            .fast_engine(false),
        [](const ModelConfig& c, int64_t dim) { return std::make_shared<DyTImpl>(c, dim); });
}

}  // namespace loom
