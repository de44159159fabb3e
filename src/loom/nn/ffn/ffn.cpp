// Feed-forward blocks: the two-layer MLP (ReLU as in Vaswani et al. 2017, GELU as in GPT-2) and
// the gated variants of Shazeer 2020 (SwiGLU as in LLaMA, GeGLU). Gated blocks fuse the gate and
// up projections into one matmul: w_in maps d_model -> 2 * d_ff, [gate; up].
#include "loom/nn/blocks.h"
#include "loom/nn/ffn/ffn.h"

namespace loom {
namespace {

using Activation = torch::Tensor (*)(const torch::Tensor&);

// NormFormer's norm after the FFN's first layer, registered as "mid_norm"; null otherwise.
std::shared_ptr<NormImpl> make_mid_norm(const ModelConfig& c, torch::nn::Module& ffn) {
  if (c.norm_placement != "normformer") return nullptr;
  return ffn.register_module("mid_norm", blocks().norms.get(c.norm, "model.norm")(c, c.d_ff));
}

torch::Tensor gelu(const torch::Tensor& x) { return torch::gelu(x); }
torch::Tensor relu(const torch::Tensor& x) { return torch::relu(x); }
torch::Tensor silu(const torch::Tensor& x) { return torch::silu(x); }

class MlpImpl : public FfnImpl {
 public:
  MlpImpl(const ModelConfig& c, Activation act) : act_(act) {
    w_in = register_module("w_in", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.d_ff).bias(c.bias)));
    w_out = register_module("w_out", torch::nn::Linear(torch::nn::LinearOptions(c.d_ff, c.d_model).bias(c.bias)));
    mid_norm = make_mid_norm(c, *this);
  }
  // y = w_out(act(w_in x)), with NormFormer: w_out(norm(act(w_in x)))
  torch::Tensor forward(const torch::Tensor& x) override { return w_out(mid(act_(w_in(x)))); }
  torch::nn::Linear w_in{nullptr}, w_out{nullptr};
  std::shared_ptr<NormImpl> mid_norm;  // [d_ff], NormFormer only

 private:
  torch::Tensor mid(const torch::Tensor& h) { return mid_norm ? mid_norm->forward(h) : h; }

 private:
  Activation act_;
};

class GluImpl : public FfnImpl {
 public:
  GluImpl(const ModelConfig& c, Activation act) : act_(act) {
    w_in = register_module("w_in", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, 2 * c.d_ff).bias(c.bias)));
    w_out = register_module("w_out", torch::nn::Linear(torch::nn::LinearOptions(c.d_ff, c.d_model).bias(c.bias)));
    mid_norm = make_mid_norm(c, *this);
  }
  // y = w_out(act(gate x) * (up x)), with NormFormer: w_out(norm(act(gate x) * (up x)))
  torch::Tensor forward(const torch::Tensor& x) override {
    auto gate_up = w_in(x).chunk(2, -1);  // 2 x [B, T, d_ff]
    auto h = act_(gate_up[0]) * gate_up[1];
    return w_out(mid_norm ? mid_norm->forward(h) : h);
  }
  torch::nn::Linear w_in{nullptr}, w_out{nullptr};
  std::shared_ptr<NormImpl> mid_norm;  // [d_ff], NormFormer only

 private:
  Activation act_;
};

template <class Impl>
FfnFactory make(Activation act) {
  return [act](const ModelConfig& c, int64_t) { return std::make_shared<Impl>(c, act); };
}

}  // namespace

void register_ffns(Registry<FfnFactory>& r) {
  r.add({"", "relu", "two-layer MLP with ReLU", "Vaswani et al. 2017, Attention Is All You Need"},
        make<MlpImpl>(relu));
  r.add({"", "gelu", "two-layer MLP with GELU (GPT-2, BERT)",
         "Hendrycks & Gimpel 2016, Gaussian Error Linear Units (GELUs)"},
        make<MlpImpl>(gelu));
  r.add({"", "swiglu", "gated MLP, SiLU gate (LLaMA)", "Shazeer 2020, GLU Variants Improve Transformer"},
        make<GluImpl>(silu));
  r.add({"", "geglu", "gated MLP, GELU gate", "Shazeer 2020, GLU Variants Improve Transformer"},
        make<GluImpl>(gelu));
}

}  // namespace loom
