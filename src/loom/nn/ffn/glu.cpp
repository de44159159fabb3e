// Gated feed-forward blocks (Shazeer 2020, "GLU Variants Improve Transformer"): SwiGLU as in
// LLaMA, GeGLU; one module with the gate's activation as its one setting, so both names are
// registered here. The gate and up projections are one matmul: w_in maps d_model -> 2 * d_ff,
// rows [gate; up].
#include "loom/nn/ffn/ffn.h"
#include "loom/nn/norm/norm.h"

namespace loom {
namespace {

using Activation = torch::Tensor (*)(const torch::Tensor&);
torch::Tensor gelu(const torch::Tensor& x) { return torch::gelu(x); }
torch::Tensor silu(const torch::Tensor& x) { return torch::silu(x); }

class GluImpl : public FfnImpl {
 public:
  // Tensor parallel: this rank's d_ff / T hidden units, gate and up (nn/tensor_parallel.h).
  GluImpl(const ModelConfig& c, Activation act) : act_(act), bias_rank_(c.tp_rank == 0) {
    const int64_t d_ff = c.d_ff / c.tp_size;
    w_in = register_linear("w_in", c.d_model, 2 * d_ff, c.bias, kQuantizable);  // [gate; up]
    w_out = register_linear("w_out", d_ff, c.d_model, c.bias, kQuantizable | kResidualOutput);
    mid_norm = make_mid_norm(c, d_ff, *this);
    declare_fused("w_in.weight", {0, {d_ff, d_ff}});
    if (c.bias) declare_fused("w_in.bias", {0, {d_ff, d_ff}});
    if (c.tp_size > 1) declare_slices(c, {c.d_ff, c.d_ff});
  }
  // y = w_out(act(gate x) * (up x)), with NormFormer: w_out(norm(act(gate x) * (up x)))
  torch::Tensor forward(const torch::Tensor& x) override {
    auto gate_up = w_in(x).chunk(2, -1);  // 2 x [B, T, d_ff]
    auto h = act_(gate_up[0]) * gate_up[1];
    return project_out(w_out, mid_norm ? mid_norm->forward(h) : h, bias_rank_);
  }
  torch::nn::Linear w_in{nullptr}, w_out{nullptr};
  std::shared_ptr<NormImpl> mid_norm;  // [d_ff], NormFormer only

 private:
  Activation act_;
  bool bias_rank_;
};

FfnFactory make(Activation act) {
  return [act](const ModelConfig& c, int64_t) { return std::make_shared<GluImpl>(c, act); };
}

}  // namespace

void register_glu(Registry<FfnFactory>& r) {
  r.add(BlockInfo("swiglu", "gated MLP, SiLU gate (LLaMA)", "Shazeer 2020, GLU Variants Improve Transformer")
            .with_traits({"tensor_parallel"})
            .fast_engine(true),
        make(silu));
  r.add(BlockInfo("geglu", "gated MLP, GELU gate", "Shazeer 2020, GLU Variants Improve Transformer")
            .with_traits({"tensor_parallel"})
            .fast_engine(true),
        make(gelu));
}

}  // namespace loom
