// The Mamba block (Gu & Dao 2023; reference: state-spaces/mamba, mamba_simple.py), a token
// mixer without attention:
//   [x, z] = in_proj(u);  x = silu(causal_depthwise_conv(x));
//   [dt, B, C] = x_proj(x);  delta = softplus(dt_proj(dt));  A = -exp(A_log)
//   y = selective_scan(x, delta, A, B, C, D);  out = out_proj(y * silu(z))
// Init as the reference (mamba_simple.py, and mixer_seq_simple.py's _init_weights): A_log =
// log(1..d_state) per channel, D = 1, dt_proj's bias such that softplus(bias) is log-uniform in
// [1e-3, 0.1] and its weight U(+-dt_rank^-0.5); in_proj and x_proj keep PyTorch's default
// U(+-1/sqrt(fan_in)), and out_proj gets it divided by sqrt(2 n_layers) (two residual branches
// per layer here: the mixer and the FFN). The model's generic N(0, 0.02) would make dt_proj's
// weight 14x smaller at dt_rank 4, so the step size would start nearly input-independent. Shapes: B batch, T time, Di = expand * d_model,
// N = d_state, R = dt_rank, K = d_conv.
// Incremental decoding keeps the last K-1 conv inputs and the scan state: O(1) per token.
#include <cmath>

#include "loom/nn/mixer/mamba.h"

#include "loom/core/error.h"
#include "loom/nn/mixer.h"
#include "loom/nn/mixer/selective_scan.h"

namespace loom {
namespace {

class MambaImpl : public MixerImpl {
 public:
  explicit MambaImpl(const ModelConfig& c)
      : d_inner_(c.mamba.expand * c.d_model),
        d_state_(c.mamba.d_state),
        d_conv_(c.mamba.d_conv),
        dt_rank_(c.mamba.dt_rank > 0 ? c.mamba.dt_rank : (c.d_model + 15) / 16),
        n_layers_(c.n_layers) {
    using torch::nn::Linear, torch::nn::LinearOptions;
    in_proj = register_module("in_proj", Linear(LinearOptions(c.d_model, 2 * d_inner_).bias(false)));
    conv_weight = register_parameter("conv_weight", torch::empty({d_inner_, 1, d_conv_}));  // depthwise
    conv_bias = register_parameter("conv_bias", torch::zeros({d_inner_}));
    x_proj = register_module("x_proj", Linear(LinearOptions(d_inner_, dt_rank_ + 2 * d_state_).bias(false)));
    dt_proj = register_module("dt_proj", Linear(LinearOptions(dt_rank_, d_inner_).bias(true)));
    A_log =
        register_parameter("A_log", torch::log(torch::arange(1, d_state_ + 1, torch::kFloat)).repeat({d_inner_, 1}));
    D = register_parameter("D", torch::ones({d_inner_}));
    out_proj = register_module("out_proj", Linear(LinearOptions(d_inner_, c.d_model).bias(false)));
    // A_log holds decay rates, not a projection: no weight decay (as the reference). out_proj
    // writes into the residual stream (its own init below scales it as the model's rule would).
    declare("A_log", kNoDecay);
    declare("out_proj.weight", kResidualOutput);
    declare_fused("in_proj.weight", {0, {d_inner_, d_inner_}});           // [x; z]
    declare_fused("x_proj.weight", {0, {dt_rank_, d_state_, d_state_}});  // [dt; B; C]
    reset_special_parameters();
  }

  void reset_special_parameters() override {
    torch::NoGradGuard no_grad;
    auto fan_in_uniform = [](torch::nn::Linear& linear, double scale) {
      const double limit = scale / std::sqrt(static_cast<double>(linear->weight.size(1)));
      linear->weight.uniform_(-limit, limit);
    };
    fan_in_uniform(in_proj, 1.0);
    fan_in_uniform(x_proj, 1.0);
    fan_in_uniform(dt_proj, 1.0);  // fan_in = dt_rank: U(+-dt_rank^-0.5)
    fan_in_uniform(out_proj, 1.0 / std::sqrt(2.0 * static_cast<double>(n_layers_)));
    const double bound = 1.0 / std::sqrt(static_cast<double>(d_conv_));
    conv_weight.uniform_(-bound, bound);
    conv_bias.zero_();
    A_log.copy_(torch::log(torch::arange(1, d_state_ + 1, torch::kFloat)).repeat({d_inner_, 1}));
    D.fill_(1.0);
    auto dt = torch::exp(torch::rand({d_inner_}) * (std::log(0.1) - std::log(1e-3)) + std::log(1e-3));
    dt_proj->bias.copy_(dt + torch::log(-torch::expm1(-dt)));  // inverse of softplus
  }

  // x: [B, T, d_model] -> [B, T, d_model]
  torch::Tensor forward(const torch::Tensor& input, const MixerContext& ctx) override {
    const int64_t b = input.size(0), t = input.size(1);
    auto xz = in_proj(input).chunk(2, -1);
    auto x = xz[0], z = xz[1];  // [B, T, Di]
    // Causal depthwise convolution over time, continuing from the cached inputs.
    torch::Tensor history = ctx.state != nullptr && ctx.offset > 0
                                ? (*ctx.state)[kConv].to(x.scalar_type())
                                : torch::zeros({b, d_conv_ - 1, d_inner_}, x.options());  // [B, K-1, Di]
    auto padded = torch::cat({history, x}, 1);                                            // [B, K-1+T, Di]
    if (ctx.state != nullptr) (*ctx.state)[kConv].copy_(padded.narrow(1, t, d_conv_ - 1));
    namespace F = torch::nn::functional;
    x = F::conv1d(padded.transpose(1, 2), conv_weight.to(x.scalar_type()),
                  F::Conv1dFuncOptions().bias(conv_bias.to(x.scalar_type())).groups(d_inner_))
            .transpose(1, 2);  // [B, T, Di]
    x = torch::silu(x);
    auto dbc = x_proj(x).split({dt_rank_, d_state_, d_state_}, -1);
    auto delta = torch::nn::functional::softplus(dt_proj(dbc[0]).to(torch::kFloat));  // [B, T, Di]
    auto A = -torch::exp(A_log);                                                      // [Di, N]
    torch::Tensor h0 = ctx.state != nullptr && ctx.offset > 0 ? (*ctx.state)[kScan] : torch::Tensor();
    auto [y, h_last] = selective_scan(x, delta, A, dbc[1], dbc[2], D, h0);  // [B, T, Di]
    if (ctx.state != nullptr) (*ctx.state)[kScan].copy_(h_last);
    return out_proj(y.to(z.scalar_type()) * torch::silu(z));
  }

  // The conv window [B, K-1, Di] and the scan state [B, Di, N] (fp32), both kRecurrent.
  MixerState make_cache(int64_t batch, int64_t, torch::TensorOptions options) override {
    MixerState state;
    state.add(StateKind::kRecurrent, torch::zeros({batch, d_conv_ - 1, d_inner_}, options));
    state.add(StateKind::kRecurrent, torch::zeros({batch, d_inner_, d_state_}, options.dtype(torch::kFloat)));
    return state;
  }

  torch::nn::Linear in_proj{nullptr}, x_proj{nullptr}, dt_proj{nullptr}, out_proj{nullptr};
  torch::Tensor conv_weight, conv_bias, A_log, D;

 private:
  static constexpr size_t kConv = 0, kScan = 1;  // indices in the MixerState
  int64_t d_inner_, d_state_, d_conv_, dt_rank_, n_layers_;
};

}  // namespace

void MambaOptions::validate(const std::string& source) const {
  if (d_state <= 0) fail("{}: model.d_state must be positive, got {}", source, d_state);
  if (d_conv <= 0) fail("{}: model.d_conv must be positive, got {}", source, d_conv);
  if (expand <= 0) fail("{}: model.expand must be positive, got {}", source, expand);
  if (dt_rank < 0) fail("{}: model.dt_rank must be >= 0, got {}", source, dt_rank);
}

void register_mamba(Registry<MixerFactory>& r) {
  r.add(BlockInfo("mamba", "selective state-space mixer (no attention), fused CPU scan, O(1) decoding state",
                  "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces")
            .with_traits({"causal"})
            .with_options<MambaOptions>()
            .fast_engine(false),
        [](const ModelConfig& c, int64_t) { return std::make_shared<MambaImpl>(c); });
}

}  // namespace loom
