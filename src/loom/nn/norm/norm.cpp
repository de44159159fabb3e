// LayerNorm (Ba et al. 2016), RMSNorm (Zhang & Sennrich 2019) and DyT (Zhu et al. 2025).
#include "loom/nn/norm/norm.h"

namespace loom {
namespace {

class LayerNormImpl : public NormImpl {
 public:
  LayerNormImpl(const ModelConfig& c, int64_t dim) : dim_(dim), eps_(c.norm_eps) {
    weight = register_parameter("weight", torch::ones({dim}));
    if (c.bias) bias = register_parameter("bias", torch::zeros({dim}));
  }
  // y = (x - mean) / sqrt(var + eps) * weight + bias, in fp32 (bf16 inputs, e.g. queries under
  // autocast with QK-norm, would not match the fp32 weights), returned in the input dtype.
  torch::Tensor forward(const torch::Tensor& x) override {
    if (x.scalar_type() == torch::kFloat) return torch::layer_norm(x, {dim_}, weight, bias, eps_);
    return torch::layer_norm(x.to(torch::kFloat), {dim_}, weight, bias, eps_).to(x.scalar_type());
  }
  torch::Tensor weight, bias;  // [dim]; bias undefined without model.bias

 private:
  int64_t dim_;
  double eps_;
};

class RMSNormImpl : public NormImpl {
 public:
  RMSNormImpl(const ModelConfig& c, int64_t dim) : eps_(c.norm_eps) {
    weight = register_parameter("weight", torch::ones({dim}));
  }
  // y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 whatever the input dtype.
  torch::Tensor forward(const torch::Tensor& x) override {
    auto x32 = x.to(torch::kFloat);
    auto normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps_);
    return (normed * weight).to(x.scalar_type());
  }
  torch::Tensor weight;  // [dim]

 private:
  double eps_;
};

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

void register_norms(Registry<NormFactory>& r) {
  r.add({"", "layernorm", "LayerNorm: centre, scale to unit variance, affine (bias if model.bias)",
         "Ba et al. 2016, Layer Normalization"},
        [](const ModelConfig& c, int64_t dim) { return std::make_shared<LayerNormImpl>(c, dim); });
  r.add({"", "rmsnorm", "RMSNorm: scale by the root mean square, no centring, no bias",
         "Zhang & Sennrich 2019, Root Mean Square Layer Normalization"},
        [](const ModelConfig& c, int64_t dim) { return std::make_shared<RMSNormImpl>(c, dim); });
  r.add({"", "dyt", "dynamic tanh: weight * tanh(alpha x) + bias, no statistics",
         "Zhu et al. 2025, Transformers without Normalization"},
        [](const ModelConfig& c, int64_t dim) { return std::make_shared<DyTImpl>(c, dim); });
}

}  // namespace loom
