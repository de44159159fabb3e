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
  EXPECT_NEAR(linear_cross_entropy(hidden, weight, targets, torch::kFloat).item<double>(),
              expected.item<double>(), 1e-5);
  EXPECT_THROW(linear_cross_entropy(hidden, weight, torch::tensor({1, 10, 0}), torch::kFloat), c10::Error);
}
