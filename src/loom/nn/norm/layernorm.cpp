// LayerNorm (Ba et al. 2016).
#include "loom/nn/norm/norm.h"

namespace loom {
namespace {

class LayerNormImpl : public NormImpl {
 public:
  LayerNormImpl(const ModelConfig& c, int64_t dim) : dim_(dim), eps_(c.norm_eps) {
    weight = register_parameter("weight", torch::ones({dim}));
    if (c.bias) bias = register_parameter("bias", torch::zeros({dim}));
  }
  // y = (x - mean) / sqrt(var + eps) * weight + bias, in the weights' dtype (bf16 inputs, e.g.
  // queries under autocast with QK-norm, would not match fp32 weights; a model moved to fp64, as
  // architecture search's synflow does, stays fp64), returned in the input dtype.
  torch::Tensor forward(const torch::Tensor& x) override {
    if (x.scalar_type() == weight.scalar_type()) return torch::layer_norm(x, {dim_}, weight, bias, eps_);
    return torch::layer_norm(x.to(weight.scalar_type()), {dim_}, weight, bias, eps_).to(x.scalar_type());
  }
  torch::Tensor weight, bias;  // [dim]; bias undefined without model.bias

 private:
  int64_t dim_;
  double eps_;
};

}  // namespace

void register_layernorm(Registry<NormFactory>& r) {
  r.add(BlockInfo("layernorm", "LayerNorm: centre, scale to unit variance, affine (bias if model.bias)",
                  "Ba et al. 2016, Layer Normalization")
            .fast_engine(true),
        [](const ModelConfig& c, int64_t dim) { return std::make_shared<LayerNormImpl>(c, dim); });
}

}  // namespace loom
