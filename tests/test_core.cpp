#include <gtest/gtest.h>

#include <random>

#include "loom/core/error.h"
#include "loom/core/utf8.h"

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

TEST(Runtime, OpenBlasCoreIsRaisedOnlyWhenItsDetectionFellShortOfTheCpu) {
  const std::string avx512_bf16 = "fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni";
  const std::string avx512 = "fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl";
  const std::string avx2 = "fpu sse2 avx avx2 fma";
  // A masked virtual CPU detected as Prescott gets the kernels its flags allow.
  EXPECT_EQ(loom::openblas_core_for("Prescott", avx512_bf16), "Cooperlake");
  EXPECT_EQ(loom::openblas_core_for("Prescott", avx512), "SkylakeX");
  EXPECT_EQ(loom::openblas_core_for("Sandybridge", avx2), "Haswell");
  // A detection at or above what the flags allow is kept, as is any CPU without AVX2.
  EXPECT_EQ(loom::openblas_core_for("SkylakeX", avx512_bf16), "");
  EXPECT_EQ(loom::openblas_core_for("Cooperlake", avx512), "");
  EXPECT_EQ(loom::openblas_core_for("Zen", avx2), "");
  EXPECT_EQ(loom::openblas_core_for("Haswell", avx2), "");
  EXPECT_EQ(loom::openblas_core_for("Prescott", "fpu sse2 avx"), "");
  // Flags match whole words: "avx512f" alone is not the whole AVX-512 set SkylakeX's kernels use.
  EXPECT_EQ(loom::openblas_core_for("Prescott", "avx2 fma avx512f"), "Haswell");
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

// Unicode's own example of maximal-subpart replacement (Unicode 15, table 3-8; Python's
// errors="replace" gives the same), well-formed edge cases, and the streaming property the server
// relies on: repairing what is complete so far is a prefix of repairing the whole.
TEST(Utf8, RepairReplacesMaximalSubpartsAndStreams) {
  const std::string bad =
      "a\xF1\x80\x80\xE1\x80\xC2"
      "b\x80"
      "c\x80\xBF"
      "d";
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(loom::utf8_repair(bad), "a" + r + r + r + "b" + r + "c" + r + r + "d");
  EXPECT_EQ(loom::utf8_invalid_at(bad), 1u);
  for (const std::string ok :
       {"", "plain", "caf\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xF4\x8F\xBF\xBF", "\xED\x9F\xBF"}) {
    EXPECT_EQ(loom::utf8_invalid_at(ok), std::string::npos) << ok;
    EXPECT_EQ(loom::utf8_repair(ok), ok);
    EXPECT_EQ(loom::utf8_complete_prefix(ok), ok.size());
  }
  // Surrogates, overlongs and code points past U+10FFFF are ill-formed.
  for (const std::string no : {"\xED\xA0\x80", "\xC0\xAF", "\xE0\x80\xAF", "\xF4\x90\x80\x80", "\xF5\x80"})
    EXPECT_NE(loom::utf8_invalid_at(no), std::string::npos) << loom::utf8_repair(no);
  // An unfinished character at the end is held back, not replaced, until the text is final.
  EXPECT_EQ(loom::utf8_complete_prefix("ab\xE2\x82"), 2u);
  EXPECT_EQ(loom::utf8_complete_prefix("ab\xE2\x28"), 4u);  // already ill-formed: nothing to wait for
  EXPECT_EQ(loom::utf8_repair("ab\xE2\x82"), "ab" + r);
  std::mt19937 rng(5);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    for (int i = 0, n = static_cast<int>(rng() % 12); i < n; ++i)
      text += static_cast<char>(rng() % 3 ? 0x80 + rng() % 0x80 : rng() % 0x100);
    const std::string whole = loom::utf8_repair(text);
    EXPECT_EQ(loom::utf8_invalid_at(whole), std::string::npos);
    for (size_t cut = 0; cut <= text.size(); ++cut) {
      const std::string part = text.substr(0, cut);
      const std::string emitted = loom::utf8_repair(part.substr(0, loom::utf8_complete_prefix(part)));
      ASSERT_EQ(whole.compare(0, emitted.size(), emitted), 0) << "cut " << cut;
    }
  }
}
