#include <gtest/gtest.h>

#include "loom/core/error.h"

TEST(Core, FailFormatsOneLine) {
  try {
    loom::fail("unknown key '{}' in {}", "d_modle", "x.yaml");
    FAIL() << "fail() returned";
  } catch (const loom::Error& e) {
    EXPECT_STREQ(e.what(), "unknown key 'd_modle' in x.yaml");
  }
}

#include <torch/torch.h>

#include "loom/core/runtime.h"

TEST(Runtime, OpenBlasIsInUseAndThreadsAreSet) {
  // scripts/setup.sh installs OpenBLAS for Debian's libtorch, which alone would fall back to the
  // reference BLAS; PyTorch's own libtorch (2.x wheels) carries MKL.
  const auto blas = loom::inspect_blas();
  EXPECT_NE(blas.name, "reference BLAS") << "fp32 matmuls run on " << blas.name;
  const int before = at::get_num_threads();
  EXPECT_EQ(loom::configure_threads(2), 2);
  EXPECT_EQ(at::get_num_threads(), 2);
  loom::configure_threads(before);
}

#include "loom/core/config.h"

TEST(Config, OverrideCreatesNestedKeysAndParsesYamlValues) {
  YAML::Node root = YAML::Load("model: {d_model: 8}");
  loom::apply_override(root, "model.layers=[a, b]");
  loom::apply_override(root, "train.lr=0.5");
  EXPECT_EQ(root["model"]["d_model"].as<int>(), 8);
  EXPECT_EQ(root["model"]["layers"].as<std::vector<std::string>>(), (std::vector<std::string>{"a", "b"}));
  EXPECT_DOUBLE_EQ(root["train"]["lr"].as<double>(), 0.5);
  EXPECT_THROW(loom::apply_override(root, "model.d_model.x=1"), loom::Error);
  EXPECT_THROW(loom::apply_override(root, "=1"), loom::Error);
}
