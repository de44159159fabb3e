// The two-layer MLP: ReLU as in Vaswani et al. 2017, GELU as in GPT-2 and BERT; one module with
// the activation as its one setting, so both names are registered here.
#include "loom/nn/ffn/ffn.h"
#include "loom/nn/norm/norm.h"

namespace loom {
namespace {

using Activation = torch::Tensor (*)(const torch::Tensor&);
torch::Tensor gelu(const torch::Tensor& x) { return torch::gelu(x); }
torch::Tensor relu(const torch::Tensor& x) { return torch::relu(x); }

class MlpImpl : public FfnImpl {
 public:
  // Tensor parallel: this rank's d_ff / T hidden units (nn/tensor_parallel.h).
  MlpImpl(const ModelConfig& c, Activation act) : act_(act), bias_rank_(c.tp_rank == 0) {
    const int64_t d_ff = c.d_ff / c.tp_size;
    w_in = register_linear("w_in", c.d_model, d_ff, c.bias, kQuantizable);
    w_out = register_linear("w_out", d_ff, c.d_model, c.bias, kQuantizable | kResidualOutput);
    mid_norm = make_mid_norm(c, d_ff, *this);
    if (c.tp_size > 1) declare_slices(c, {c.d_ff});
  }
  // y = w_out(act(w_in x)), with NormFormer: w_out(norm(act(w_in x)))
  torch::Tensor forward(const torch::Tensor& x) override { return project_out(w_out, mid(act_(w_in(x))), bias_rank_); }
  torch::nn::Linear w_in{nullptr}, w_out{nullptr};
  std::shared_ptr<NormImpl> mid_norm;  // [d_ff], NormFormer only

 private:
  torch::Tensor mid(const torch::Tensor& h) { return mid_norm ? mid_norm->forward(h) : h; }
  Activation act_;
  bool bias_rank_;
};

FfnFactory make(Activation act) {
  return [act](const ModelConfig& c, int64_t) { return std::make_shared<MlpImpl>(c, act); };
}

}  // namespace

void register_mlp(Registry<FfnFactory>& r) {
  r.add(BlockInfo("relu", "two-layer MLP with ReLU", "Vaswani et al. 2017, Attention Is All You Need")
            .with_traits({"tensor_parallel"})
            .fast_engine(true),
        make(relu));
  r.add(BlockInfo("gelu", "two-layer MLP with GELU (GPT-2, BERT)",
                  "Hendrycks & Gimpel 2016, Gaussian Error Linear Units (GELUs)")
            .with_traits({"tensor_parallel"})
            .fast_engine(true),
        make(gelu));
}

}  // namespace loom
