// The Mamba selective scan: the fused kernel against the recurrent reference, outputs and
// gradients; and the Mamba mixer's invariants (causal, recurrent decoding = parallel pass).
#include <gtest/gtest.h>

#include "loom/models/model.h"
#include "loom/nn/mixer/selective_scan.h"

using namespace loom;

namespace {

struct ScanInputs {
  torch::Tensor u, delta, A, Bm, Cm, D, h0;
};

ScanInputs random_inputs(int64_t b, int64_t t, int64_t di, int64_t n, bool with_h0) {
  torch::manual_seed(11);
  ScanInputs in;
  in.u = torch::randn({b, t, di}, torch::requires_grad());
  in.delta = torch::nn::functional::softplus(torch::randn({b, t, di}) - 1).detach().requires_grad_();
  in.A = (-torch::rand({di, n}) * 2 - 0.1).detach().requires_grad_();
  in.Bm = torch::randn({b, t, n}, torch::requires_grad());
  in.Cm = torch::randn({b, t, n}, torch::requires_grad());
  in.D = torch::randn({di}, torch::requires_grad());
  if (with_h0) in.h0 = torch::randn({b, di, n});
  return in;
}

std::vector<torch::Tensor> grads_of(const ScanInputs& in) {
  return {in.u.grad(), in.delta.grad(), in.A.grad(), in.Bm.grad(), in.Cm.grad(), in.D.grad()};
}

void zero(const ScanInputs& in) {
  for (auto t : {in.u, in.delta, in.A, in.Bm, in.Cm, in.D}) t.mutable_grad() = torch::Tensor();
}

}  // namespace

TEST(SelectiveScan, FusedKernelEqualsRecurrentReference) {
  for (bool with_h0 : {false, true}) {
    SCOPED_TRACE(with_h0 ? "with h0" : "from zeros");
    auto in = random_inputs(2, 9, 5, 3, with_h0);
    auto [y_ref, h_ref] = selective_scan_reference(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.h0);
    auto weights = torch::randn_like(y_ref);
    (y_ref * weights).sum().backward();
    auto g_ref = grads_of(in);
    zero(in);
    auto [y, h] = selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.h0);
    EXPECT_TRUE(torch::allclose(y, y_ref, 1e-5, 1e-5)) << (y - y_ref).abs().max().item<float>();
    EXPECT_TRUE(torch::allclose(h, h_ref, 1e-5, 1e-5));
    (y * weights).sum().backward();
    auto g = grads_of(in);
    const char* names[] = {"u", "delta", "A", "B", "C", "D"};
    for (size_t i = 0; i < g.size(); ++i)
      EXPECT_TRUE(torch::allclose(g[i], g_ref[i], 1e-4, 1e-5))
          << names[i] << " max diff " << (g[i] - g_ref[i]).abs().max().item<float>();
  }
}

TEST(SelectiveScan, SplittingTheSequenceCarriesTheState) {
  auto in = random_inputs(1, 12, 4, 2, false);
  torch::NoGradGuard no_grad;
  auto [y_all, h_all] = selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, {});
  auto part = [&](const torch::Tensor& x, int64_t s, int64_t len) { return x.narrow(1, s, len); };
  auto [y1, h1] =
      selective_scan(part(in.u, 0, 7), part(in.delta, 0, 7), in.A, part(in.Bm, 0, 7), part(in.Cm, 0, 7), in.D, {});
  auto [y2, h2] =
      selective_scan(part(in.u, 7, 5), part(in.delta, 7, 5), in.A, part(in.Bm, 7, 5), part(in.Cm, 7, 5), in.D, h1);
  EXPECT_TRUE(torch::allclose(torch::cat({y1, y2}, 1), y_all, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(h2, h_all, 1e-5, 1e-6));
}

TEST(Mamba, HybridModelIsCausalAndDecodesRecurrently) {
  // A Jamba-style hybrid: Mamba layers interleaved with attention.
  ModelConfig c;
  c.vocab_size = 40;
  c.d_model = 16;
  c.n_layers = 3;
  c.n_heads = 2;
  c.d_ff = 32;
  c.max_seq_len = 20;
  c.mamba.d_state = 4;
  c.position = "rope";
  c.layers = {"mamba", "attention", "mamba"};
  c.validate("test");
  torch::manual_seed(12);
  Model model(c);
  model->eval();
  torch::NoGradGuard no_grad;
  auto tokens = torch::randint(c.vocab_size, {2, 11});
  auto full = model->forward(tokens);
  auto changed = tokens.clone();
  changed.index_put_({torch::indexing::Slice(), 6}, (tokens.index({torch::indexing::Slice(), 6}) + 1) % c.vocab_size);
  auto after = model->forward(changed);
  EXPECT_TRUE(torch::allclose(full.narrow(1, 0, 6), after.narrow(1, 0, 6), 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(full.narrow(1, 6, 5), after.narrow(1, 6, 5), 1e-5, 1e-5));
  // Prefill 4 tokens, then one at a time through the recurrent state: equals the parallel pass.
  auto cache = model->make_cache(2, c.max_seq_len);
  std::vector<torch::Tensor> pieces{model->forward(tokens.narrow(1, 0, 4), 0, &cache)};
  for (int64_t i = 4; i < 11; ++i) pieces.push_back(model->forward(tokens.narrow(1, i, 1), i, &cache));
  auto incremental = torch::cat(pieces, 1);
  EXPECT_TRUE(torch::allclose(incremental, full, 1e-4, 1e-5)) << (incremental - full).abs().max().item<float>();
}

TEST(Mamba, ModelKeepsTheReferenceInitialization) {
  ModelConfig c;
  c.vocab_size = 40;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.d_ff = 32;
  c.mamba.d_state = 4;
  c.mixer = "mamba";
  c.position = "none";
  Model model(c);
  auto params = model->named_parameters();
  auto a_log = params["layers.1.mixer.A_log"];
  EXPECT_TRUE(torch::allclose(a_log[0], torch::log(torch::arange(1, 5, torch::kFloat))));
  EXPECT_TRUE(torch::equal(params["layers.0.mixer.D"], torch::ones({32})));
  auto dt = torch::nn::functional::softplus(params["layers.0.mixer.dt_proj.bias"]);
  EXPECT_GE(dt.min().item<float>(), 1e-3f - 1e-6f);
  EXPECT_LE(dt.max().item<float>(), 0.1f + 1e-6f);
  // Linear layers as the reference: U(+-1/sqrt(fan_in)), std = bound / sqrt(3); dt_proj's fan_in
  // is dt_rank (1 here); out_proj divided by sqrt(2 n_layers) = 2.
  auto expect_uniform = [&](const std::string& name, double bound) {
    auto w = params[name];
    EXPECT_LE(w.abs().max().item<double>(), bound + 1e-6) << name;
    EXPECT_NEAR(w.std().item<double>(), bound / std::sqrt(3.0), 0.15 * bound) << name;
  };
  expect_uniform("layers.0.mixer.in_proj.weight", 1.0 / 4.0);
  expect_uniform("layers.1.mixer.x_proj.weight", 1.0 / std::sqrt(32.0));
  expect_uniform("layers.0.mixer.dt_proj.weight", 1.0);
  expect_uniform("layers.0.mixer.out_proj.weight", 1.0 / std::sqrt(32.0) / 2.0);
  // The rest of the model keeps the generic N(0, 0.02).
  EXPECT_NEAR(params["layers.0.ffn.w_in.weight"].std().item<double>(), 0.02, 0.003);
}
