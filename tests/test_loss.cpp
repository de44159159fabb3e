// Training-loop pieces against their plain references.
#include <gtest/gtest.h>

#include "loom/train/linear_cross_entropy.h"
#include "loom/train/train_step.h"

using namespace loom;

namespace {

// Loss and gradients of linear_cross_entropy and of the reference lm_loss(linear(h, W)), with the
// loss scaled by 0.5 as grad_accum = 2 does.
void expect_matches_reference(at::ScalarType dtype, double rtol, double atol) {
  torch::manual_seed(3);
  // 2 x 150 rows: more than one 256-row GEMM block, a partial 32-row softmax block.
  auto hidden = torch::randn({2, 150, 16}, torch::requires_grad());
  auto weight = torch::randn({100, 16}, torch::requires_grad());
  auto targets = torch::randint(100, {2, 150});

  auto loss = linear_cross_entropy(hidden, weight, targets, dtype);
  (loss * 0.5).backward();
  auto grad_hidden = hidden.grad().clone(), grad_weight = weight.grad().clone();
  hidden.mutable_grad() = torch::Tensor();
  weight.mutable_grad() = torch::Tensor();

  auto expected = lm_loss(torch::nn::functional::linear(hidden.to(dtype), weight.to(dtype)), targets);
  (expected * 0.5).backward();
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(loss.item<double>(), expected.item<double>(), 1e-5 * expected.item<double>());
  EXPECT_TRUE(torch::allclose(grad_hidden, hidden.grad(), rtol, atol));
  EXPECT_TRUE(torch::allclose(grad_weight, weight.grad(), rtol, atol));
}

}  // namespace

TEST(LinearCrossEntropy, MatchesLinearThenLmLossFp32) { expect_matches_reference(torch::kFloat, 1e-5, 1e-7); }

TEST(LinearCrossEntropy, MatchesLinearThenLmLossBf16) { expect_matches_reference(torch::kBFloat16, 1e-2, 1e-5); }

TEST(LinearCrossEntropy, WithoutGradientsAndBadTargets) {
  auto hidden = torch::randn({3, 8});
  auto weight = torch::randn({10, 8});
  auto targets = torch::tensor({1, 9, 0});
  auto expected = lm_loss(torch::nn::functional::linear(hidden, weight), targets);
  torch::NoGradGuard no_grad;
  EXPECT_NEAR(linear_cross_entropy(hidden, weight, targets, torch::kFloat).item<double>(), expected.item<double>(),
              1e-5);
  EXPECT_THROW(linear_cross_entropy(hidden, weight, torch::tensor({1, 10, 0}), torch::kFloat), c10::Error);
}

TEST(TrainStep, MoeLoadBalancingLossReachesTheRouter) {
  // With the language-modelling loss alone the router of a top-1 MoE still learns (Switch gates
  // by probability); the check here is that the auxiliary term changes the router's update.
  auto run = [](double aux_weight) {
    ModelConfig c;
    c.vocab_size = 30;
    c.d_model = 16;
    c.n_layers = 1;
    c.n_heads = 2;
    c.d_ff = 16;
    c.max_seq_len = 8;
    c.ffn = "moe";
    c.moe.n_experts = 4;
    c.moe.top_k = 1;
    c.moe.moe_aux_weight = aux_weight;
    torch::manual_seed(13);
    Model model(c);
    TrainConfig t;
    t.precision = "fp32";
    t.steps = 1;
    t.warmup_steps = 0;
    TrainStep step(model, t);
    auto tokens = torch::randint(30, {2, 9});
    step.run(0, [&](int64_t) { return Batch{tokens.narrow(1, 0, 8), tokens.narrow(1, 1, 8)}; });
    EXPECT_TRUE(model->aux_loss().defined());
    return model->named_parameters()["layers.0.ffn.router.weight"].clone();
  };
  EXPECT_FALSE(torch::equal(run(0.0), run(10.0)));
}

TEST(LinearCrossEntropy, ZLossMatchesItsDefinition) {
  torch::manual_seed(17);
  auto hidden = torch::randn({3, 40, 8}, torch::requires_grad());
  auto weight = torch::randn({50, 8}, torch::requires_grad());
  auto targets = torch::randint(50, {3, 40});
  const double z = 0.1;
  LossStats stats;
  auto loss = linear_cross_entropy(hidden, weight, targets, torch::kFloat, z, &stats);
  loss.backward();
  auto gh = hidden.grad().clone(), gw = weight.grad().clone();
  hidden.mutable_grad() = torch::Tensor();
  weight.mutable_grad() = torch::Tensor();
  auto logits = torch::nn::functional::linear(hidden, weight);
  auto log_z = torch::logsumexp(logits, -1);
  auto cross_entropy = lm_loss(logits, targets);
  auto reference = cross_entropy + z * log_z.pow(2).mean();
  reference.backward();
  EXPECT_NEAR(loss.item<double>(), reference.item<double>(), 1e-4);
  EXPECT_NEAR(stats.cross_entropy, cross_entropy.item<double>(), 1e-4);
  EXPECT_NEAR(stats.log_z, log_z.mean().item<double>(), 1e-4);
  EXPECT_TRUE(torch::allclose(gh, hidden.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(gw, weight.grad(), 1e-4, 1e-5));
}
