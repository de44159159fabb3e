// The encoder: bidirectional mixers against references on tiny shapes (libtorch's
// MultiheadAttention with a key padding mask, the quadratic form of linear attention, a DFT by
// matrices for FNet), padding that changes nothing, and pooling.
#include <gtest/gtest.h>

#include <cmath>

#include "loom/models/model.h"
#include "loom/nn/blocks.h"
#include "test_util.h"

using namespace loom;

namespace {

ModelConfig encoder_config() {
  ModelConfig c;
  c.arch = "encoder";
  c.n_classes = 3;
  c.vocab_size = 30;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.d_ff = 32;
  c.max_seq_len = 16;
  return c;
}

// padding [B, T]: the last `pads` positions of sequence 1 are padding.
torch::Tensor padding_mask(int64_t b, int64_t t, int64_t pads) {
  auto padding = torch::zeros({b, t}, torch::kBool);
  padding[1].narrow(0, t - pads, pads).fill_(true);
  return padding;
}

void copy_weights(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto source = from.named_parameters();
  for (auto& item : to.named_parameters()) item.value().copy_(source[item.key()]);
}

}  // namespace

TEST(Encoder, BidirectionalAttentionMatchesLibtorchWithKeyPadding) {
  torch::manual_seed(30);
  auto c = encoder_config();
  auto position = blocks().positions.get("none", "test")(c);
  auto attention = blocks().mixers.get("attention", "test")(c, 0);
  torch::nn::MultiheadAttention reference(torch::nn::MultiheadAttentionOptions(c.d_model, c.n_heads));
  share_weights_with(*attention, reference);
  const int64_t b = 2, t = 7;
  auto x = torch::randn({b, t, c.d_model});
  auto padding = padding_mask(b, t, 3);
  auto ours = attention->forward(x, MixerContext{position.get(), 0, nullptr, padding});
  auto xt = x.transpose(0, 1);
  auto theirs = std::get<0>(reference->forward(xt, xt, xt, padding)).transpose(0, 1);
  EXPECT_TRUE(torch::allclose(ours, theirs, 1e-5, 1e-5)) << (ours - theirs).abs().max().item<float>();
}

TEST(Encoder, BidirectionalLinearAttentionEqualsItsQuadraticForm) {
  torch::manual_seed(31);
  auto c = encoder_config();
  auto position = blocks().positions.get("none", "test")(c);
  auto linear = blocks().mixers.get("linear_attention", "test")(c, 0);
  const int64_t b = 2, t = 6, h = c.n_heads, d = c.head_dim();
  auto x = torch::randn({b, t, c.d_model});
  auto padding = padding_mask(b, t, 2);
  auto qkv = torch::nn::functional::linear(x, param(*linear, "wqkv.weight"), param(*linear, "wqkv.bias"))
                 .view({b, t, 3, h, d})
                 .permute({2, 0, 3, 1, 4});                                              // [3, B, H, T, D]
  auto a = (torch::elu(qkv[0]) + 1).matmul((torch::elu(qkv[1]) + 1).transpose(-2, -1));  // [B, H, T, T]
  a = a.masked_fill(padding.view({b, 1, 1, t}), 0.0);                                    // no one attends to padding
  auto out = (a / a.sum(-1, true)).matmul(qkv[2]).transpose(1, 2).reshape({b, t, h * d});
  auto expected = torch::nn::functional::linear(out, param(*linear, "wo.weight"), param(*linear, "wo.bias"));
  EXPECT_TRUE(
      torch::allclose(linear->forward(x, MixerContext{position.get(), 0, nullptr, padding}), expected, 1e-4, 1e-5));
}

TEST(Encoder, FNetIsTheRealPartOfAnOrthonormal2dDft) {
  auto c = encoder_config();
  auto position = blocks().positions.get("none", "test")(c);
  auto fnet = blocks().mixers.get("fnet", "test")(c, 0);
  const int64_t t = 5, d = c.d_model;
  auto x = torch::randn({2, t, d}, torch::kDouble).to(torch::kFloat);
  // exp(-2 pi i j k / N) = cos - i sin, so Re(F_T X F_D) = C_T X C_D - S_T X S_D.
  auto dft = [](int64_t n) {
    auto jk = torch::arange(n, torch::kDouble).unsqueeze(1) * torch::arange(n, torch::kDouble).unsqueeze(0);
    auto angle = jk * (2 * M_PI / static_cast<double>(n));
    return std::pair{torch::cos(angle), torch::sin(angle)};
  };
  auto [ct, st] = dft(t);
  auto [cd, sd] = dft(d);
  auto xd = x.to(torch::kDouble);
  auto expected = (ct.matmul(xd).matmul(cd) - st.matmul(xd).matmul(sd)) / std::sqrt(static_cast<double>(t * d));
  auto ours = fnet->forward(x, MixerContext{position.get(), 0, nullptr});
  EXPECT_TRUE(torch::allclose(ours.to(torch::kDouble), expected, 1e-4, 1e-5));
  // Padding positions are zeroed first: they contribute nothing.
  auto padding = padding_mask(2, t, 2);
  auto zeroed = x.masked_fill(padding.unsqueeze(-1), 0.0);
  EXPECT_TRUE(torch::allclose(fnet->forward(x, MixerContext{position.get(), 0, nullptr, padding}),
                              fnet->forward(zeroed, MixerContext{position.get(), 0, nullptr}), 1e-5, 1e-6));
  EXPECT_EQ(fnet->parameters().size(), 0u);
}

TEST(Encoder, AlibiIsSymmetricAndWindowAsWideAsTheSequenceIsFullAttention) {
  auto c = encoder_config();
  auto alibi = blocks().positions.get("alibi", "test")(c);
  auto bias = alibi->attention_bias(c.n_heads, 5, 5, 0);  // [H, T, S]
  EXPECT_TRUE(torch::equal(bias, bias.transpose(1, 2)));
  EXPECT_LT(bias[0][0][4].item<float>(), bias[0][0][1].item<float>());
  torch::manual_seed(32);
  c.layers = {"attention", "attention"};
  Model full(c);
  c.layers = {"local_attention", "local_attention"};
  c.local_attention.window = 16;
  Model local(c);
  copy_weights(*full, *local);
  torch::NoGradGuard no_grad;
  auto tokens = torch::randint(1, c.vocab_size, {2, 9});
  EXPECT_TRUE(torch::allclose(local->classify(tokens, {}), full->classify(tokens, {}), 1e-5, 1e-6));
  // A narrow window sees less: the outputs differ.
  c.local_attention.window = 2;
  Model narrow(c);
  copy_weights(*full, *narrow);
  EXPECT_FALSE(torch::allclose(narrow->classify(tokens, {}), full->classify(tokens, {}), 1e-3, 1e-3));
}

// Padding changes nothing for mixers that mask it, under both poolings, and every position
// influences the pooled output (bidirectional: the first token sees the last).
TEST(Encoder, PaddingChangesNothingAndEveryTokenCounts) {
  for (const std::string mixer : {"attention", "local_attention", "linear_attention"}) {
    for (const std::string pooling : {"cls", "mean"}) {
      SCOPED_TRACE(mixer + " with " + pooling + " pooling");
      auto c = encoder_config();
      c.mixer = mixer;
      c.pooling = pooling;
      c.position = mixer == "linear_attention" ? "rope" : "alibi";
      c.validate("test");
      torch::manual_seed(33);
      Model model(c);
      model->eval();
      torch::NoGradGuard no_grad;
      auto tokens = torch::randint(1, c.vocab_size, {1, 6});
      auto alone = model->classify(tokens, {});
      auto padded = torch::cat({tokens, torch::zeros({1, 4}, torch::kLong)}, 1);
      auto pad_mask = torch::cat({torch::zeros({1, 6}, torch::kBool), torch::ones({1, 4}, torch::kBool)}, 1);
      EXPECT_TRUE(torch::allclose(model->classify(padded, pad_mask), alone, 1e-5, 1e-6));
      auto changed = tokens.clone();
      changed[0][5] = tokens[0][5].item<int64_t>() % (c.vocab_size - 1) + 1;
      EXPECT_FALSE(torch::allclose(model->classify(changed, {}), alone, 1e-6, 1e-7));
    }
  }
}

TEST(Encoder, RecipeErrorsNameTheLayerAndTheChoices) {
  auto error_of = [](const ModelConfig& c) { return error_message([&] { c.validate("r.yaml"); }); };
  auto c = encoder_config();
  c.layers = {"attention", "mamba"};
  auto e = error_of(c);
  EXPECT_NE(e.find("layer 1: mixer 'mamba' has no bidirectional form"), std::string::npos) << e;
  EXPECT_NE(e.find("fnet"), std::string::npos) << e;  // the valid choices are listed
  auto d = c;
  d.arch = "decoder";
  d.n_classes = 0;
  d.layers = {"fnet", "attention"};
  e = error_of(d);
  EXPECT_NE(e.find("layer 0: mixer 'fnet' has no causal form"), std::string::npos) << e;
  c.layers = {"fnet", "fnet"};
  c.position = "rope";
  e = error_of(c);
  EXPECT_NE(e.find("'rope' acts inside attention"), std::string::npos) << e;
  EXPECT_NE(e.find("learned"), std::string::npos) << e;
  c.position = "learned";
  c.n_classes = 1;
  EXPECT_NE(error_of(c).find("model.n_classes"), std::string::npos);
  c.n_classes = 3;
  c.pooling = "max";
  EXPECT_NE(error_of(c).find("model.pooling"), std::string::npos);
  c.pooling = "cls";
  EXPECT_EQ(error_of(c), "no error");
}
