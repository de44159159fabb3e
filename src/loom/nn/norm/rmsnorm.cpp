// RMSNorm (Zhang & Sennrich 2019).
#include "loom/nn/norm/norm.h"

namespace loom {
namespace {

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

}  // namespace

void register_rmsnorm(Registry<NormFactory>& r) {
  r.add(BlockInfo("rmsnorm", "RMSNorm: scale by the root mean square, no centring, no bias",
                  "Zhang & Sennrich 2019, Root Mean Square Layer Normalization")
            .fast_engine(true),
        [](const ModelConfig& c, int64_t dim) { return std::make_shared<RMSNormImpl>(c, dim); });
}

}  // namespace loom
