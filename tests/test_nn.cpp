// Blocks and the decoder LM against references on tiny shapes, and the invariants of causal
// decoding (causality, cached = uncached).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>

#include "loom/core/compat.h"
#include "loom/io/safetensors.h"
#include "loom/models/model.h"
#include "loom/nn/blocks.h"
#include "test_util.h"

using namespace loom;

namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 50;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.d_ff = 32;
  c.max_seq_len = 24;
  return c;
}

}  // namespace

TEST(Attention, MatchesLibtorchMultiheadAttention) {
  torch::manual_seed(0);
  auto c = tiny_config();
  c.position = "none";
  auto position = blocks().positions.get("none", "test")(c);
  auto attention = blocks().mixers.get("attention", "test")(c, 0);
  torch::nn::MultiheadAttention reference(torch::nn::MultiheadAttentionOptions(c.d_model, c.n_heads));
  share_weights_with(*attention, reference);
  const int64_t b = 3, t = 7;
  auto x = torch::randn({b, t, c.d_model});
  auto ours = attention->forward(x, MixerContext{position.get(), 0, nullptr});
  // Additive float mask: libtorch 1.13's C++ MultiheadAttention adds attn_mask as given.
  auto mask = torch::full({t, t}, -std::numeric_limits<float>::infinity()).triu(1);
  auto xt = x.transpose(0, 1);  // [T, B, d_model]
  auto theirs = std::get<0>(reference->forward(xt, xt, xt, {}, false, mask)).transpose(0, 1);
  EXPECT_TRUE(torch::allclose(ours, theirs, 1e-5, 1e-5)) << "max diff " << (ours - theirs).abs().max().item<float>();
}

TEST(Attention, GroupedQueryWithAllHeadsEqualsMultiHead) {
  // n_kv_heads = n_heads is multi-head attention; n_kv_heads = 1 with keys/values repeated by
  // hand into every head is the same computation as multi-query attention.
  torch::manual_seed(1);
  auto c = tiny_config();
  auto position = blocks().positions.get("rope", "test")(c);
  auto mqa_config = c;
  mqa_config.n_kv_heads = 1;
  auto mqa = blocks().mixers.get("attention", "test")(mqa_config, 0);
  auto mha = blocks().mixers.get("attention", "test")(c, 0);
  const int64_t d = c.head_dim(), h = c.n_heads;
  {
    torch::NoGradGuard no_grad;
    auto w = param(*mqa, "wqkv.weight");  // [(H + 2) D, d_model]
    auto bias = param(*mqa, "wqkv.bias");
    auto q = w.narrow(0, 0, h * d), k = w.narrow(0, h * d, d), v = w.narrow(0, (h + 1) * d, d);
    param(*mha, "wqkv.weight").copy_(torch::cat({q, k.repeat({h, 1}), v.repeat({h, 1})}));
    auto qb = bias.narrow(0, 0, h * d), kb = bias.narrow(0, h * d, d), vb = bias.narrow(0, (h + 1) * d, d);
    param(*mha, "wqkv.bias").copy_(torch::cat({qb, kb.repeat({h}), vb.repeat({h})}));
    param(*mha, "wo.weight").copy_(param(*mqa, "wo.weight"));
    param(*mha, "wo.bias").copy_(param(*mqa, "wo.bias"));
  }
  auto x = torch::randn({2, 9, c.d_model});
  MixerContext ctx{position.get(), 0, nullptr};
  EXPECT_TRUE(torch::allclose(mqa->forward(x, ctx), mha->forward(x, ctx), 1e-5, 1e-5));
}

class DecoderInvariants : public testing::TestWithParam<std::tuple<std::string, int64_t>> {};

TEST_P(DecoderInvariants, CausalAndCacheEqualsRecompute) {
  auto [position, kv_heads] = GetParam();
  torch::manual_seed(2);
  auto c = tiny_config();
  c.position = position;
  c.n_kv_heads = kv_heads;
  c.norm = kv_heads == 2 ? "rmsnorm" : "layernorm";
  c.ffn = kv_heads == 2 ? "swiglu" : "gelu";
  c.tie_embeddings = kv_heads != 2;
  c.bias = kv_heads != 2;
  Model model(c);
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t t = 12;
  auto tokens = torch::randint(c.vocab_size, {2, t});
  auto full = model->forward(tokens);  // [2, T, V]

  // Causality: changing token j never changes the outputs at positions before j.
  const int64_t j = 7;
  auto changed = tokens.clone();
  changed.index_put_({torch::indexing::Slice(), j}, (tokens.index({torch::indexing::Slice(), j}) + 1) % c.vocab_size);
  auto after = model->forward(changed);
  EXPECT_TRUE(torch::allclose(full.narrow(1, 0, j), after.narrow(1, 0, j), 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(full.narrow(1, j, t - j), after.narrow(1, j, t - j), 1e-5, 1e-5));

  // Incremental decoding: a 5-token prefill, then one token at a time, equals the full pass.
  auto cache = model->make_cache(2, c.max_seq_len);
  std::vector<torch::Tensor> pieces{model->forward(tokens.narrow(1, 0, 5), 0, &cache)};
  for (int64_t i = 5; i < t; ++i) pieces.push_back(model->forward(tokens.narrow(1, i, 1), i, &cache));
  auto incremental = torch::cat(pieces, 1);
  EXPECT_TRUE(torch::allclose(incremental, full, 1e-4, 1e-5))
      << "max diff " << (incremental - full).abs().max().item<float>();
}

INSTANTIATE_TEST_SUITE_P(Positions, DecoderInvariants,
                         testing::Combine(testing::Values("learned", "sinusoidal", "rope", "alibi", "none"),
                                          testing::Values(int64_t{0}, int64_t{2})));

TEST(Model, ContextOverflowIsAnError) {
  auto c = tiny_config();
  Model model(c);
  torch::NoGradGuard no_grad;
  EXPECT_THROW(model->forward(torch::zeros({1, c.max_seq_len + 1}, torch::kLong)), loom::Error);
}

TEST(Model, ParameterNamesArePinned) {
  // Parameter names are a file format (STYLE.md 10): renaming one breaks every checkpoint.
  auto c = tiny_config();
  c.tie_embeddings = false;
  Model model(c);
  std::vector<std::string> names;
  for (auto& item : model->named_parameters()) names.push_back(item.key());
  const std::vector<std::string> expected_prefix = {"tok_emb.weight",
                                                    "pos.weight",
                                                    "layers.0.norm1.weight",
                                                    "layers.0.norm1.bias",
                                                    "layers.0.mixer.wqkv.weight",
                                                    "layers.0.mixer.wqkv.bias",
                                                    "layers.0.mixer.wo.weight",
                                                    "layers.0.mixer.wo.bias",
                                                    "layers.0.norm2.weight",
                                                    "layers.0.norm2.bias",
                                                    "layers.0.ffn.w_in.weight",
                                                    "layers.0.ffn.w_in.bias",
                                                    "layers.0.ffn.w_out.weight",
                                                    "layers.0.ffn.w_out.bias"};
  ASSERT_GE(names.size(), expected_prefix.size());
  for (size_t i = 0; i < expected_prefix.size(); ++i) EXPECT_EQ(names[i], expected_prefix[i]);
  EXPECT_EQ(names[names.size() - 3], "norm_f.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
}

TEST(Norms, LayernormMatchesLibtorch) {
  torch::manual_seed(3);
  auto c = tiny_config();
  auto x = torch::randn({3, 5, c.d_model});
  auto layernorm = blocks().norms.get("layernorm", "test")(c, c.d_model);
  torch::nn::LayerNorm reference(torch::nn::LayerNormOptions({c.d_model}).eps(c.norm_eps));
  EXPECT_TRUE(torch::allclose(layernorm->forward(x), reference(x), 1e-5, 1e-6));
}

TEST(Norms, RmsnormMatchesItsDefinition) {
  torch::manual_seed(3);
  auto c = tiny_config();
  auto x = torch::randn({3, 5, c.d_model});
  auto rmsnorm = blocks().norms.get("rmsnorm", "test")(c, c.d_model);
  auto expected = x / torch::sqrt(x.pow(2).mean(-1, true) + c.norm_eps);
  EXPECT_TRUE(torch::allclose(rmsnorm->forward(x), expected, 1e-5, 1e-6));
}

// Learned positions add row offset + t of their table to the t-th embedding.
TEST(Positions, LearnedAddsItsTableRowsFromTheOffset) {
  auto c = tiny_config();
  auto learned = blocks().positions.get("learned", "test")(c);
  auto table = param(*learned, "weight");
  {
    torch::NoGradGuard no_grad;
    table.normal_();
  }
  auto x = torch::randn({2, 3, c.d_model});
  EXPECT_TRUE(torch::allclose(learned->embed(x, 5), x + table.narrow(0, 5, 3).unsqueeze(0)));
  EXPECT_NE(error_message([&] { learned->embed(x, c.max_seq_len - 2); }).find("exceed"), std::string::npos);
}

// PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d)), written out per entry.
TEST(Positions, SinusoidalMatchesTheFormula) {
  auto c = tiny_config();
  auto sinusoidal = blocks().positions.get("sinusoidal", "test")(c);
  auto pe = sinusoidal->embed(torch::zeros({1, 4, c.d_model}), 3)[0];  // positions 3..6
  for (int64_t t = 0; t < 4; ++t)
    for (int64_t i = 0; i < c.d_model; ++i) {
      const double angle = (3 + t) / std::pow(10000.0, static_cast<double>(i - i % 2) / c.d_model);
      EXPECT_NEAR(pe[t][i].item<double>(), i % 2 ? std::cos(angle) : std::sin(angle), 1e-5) << t << " " << i;
    }
}

// No position scheme leaves embeddings, queries and keys as they are and biases no score.
TEST(Positions, NoneChangesNothing) {
  auto c = tiny_config();
  auto none = blocks().positions.get("none", "test")(c);
  auto x = torch::randn({2, 3, c.d_model}), q = torch::randn({2, 3, 4, 4});
  EXPECT_TRUE(torch::equal(none->embed(x, 7), x));
  auto [q2, k2] = none->rotate(q, q, 7);
  EXPECT_TRUE(torch::equal(q2, q) && torch::equal(k2, q));
  EXPECT_FALSE(none->attention_bias(4, 3, 3, 0).defined());
}

// The feed-forward blocks against their equations, written out with the block's own weights:
// MLPs w_out(act(w_in x)), GLUs w_out(act(gate x) * (up x)) with w_in's rows [gate; up].
void expect_ffn_equation(const std::string& name) {
  SCOPED_TRACE(name);
  torch::manual_seed(11);
  auto c = tiny_config();
  auto ffn = blocks().ffns.get(name, "test")(c, 0);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : ffn->parameters()) p.normal_();
  }
  auto x = torch::randn({2, 3, c.d_model});
  auto w_in = param(*ffn, "w_in.weight"), b_in = param(*ffn, "w_in.bias");
  auto w_out = param(*ffn, "w_out.weight"), b_out = param(*ffn, "w_out.bias");
  auto h = torch::matmul(x, w_in.t()) + b_in;
  torch::Tensor mid;
  if (name == "relu") mid = torch::relu(h);
  else if (name == "gelu") mid = torch::gelu(h);
  else {
    auto gate = h.narrow(-1, 0, c.d_ff), up = h.narrow(-1, c.d_ff, c.d_ff);
    mid = (name == "swiglu" ? gate * torch::sigmoid(gate) : torch::gelu(gate)) * up;
  }
  EXPECT_TRUE(torch::allclose(ffn->forward(x), torch::matmul(mid, w_out.t()) + b_out, 1e-4, 1e-4));
}

TEST(Ffn, ReluMatchesTheMlpEquation) { expect_ffn_equation("relu"); }
TEST(Ffn, GeluMatchesTheMlpEquation) { expect_ffn_equation("gelu"); }
TEST(Ffn, SwigluMatchesTheGluEquation) { expect_ffn_equation("swiglu"); }
TEST(Ffn, GegluMatchesTheGluEquation) { expect_ffn_equation("geglu"); }

TEST(Positions, RopeRotatesByRelativeAngle) {
  // <rope(q, m), rope(k, n)> depends only on m - n.
  auto c = tiny_config();
  auto rope = blocks().positions.get("rope", "test")(c);
  auto q = torch::randn({1, 1, 1, c.head_dim()});
  auto k = torch::randn({1, 1, 1, c.head_dim()});
  auto dot = [&](int64_t m, int64_t n) {
    auto qm = rope->rotate(q, q, m).first;
    auto kn = rope->rotate(k, k, n).second;
    return (qm * kn).sum().item<double>();
  };
  EXPECT_NEAR(dot(5, 2), dot(13, 10), 1e-4);
  EXPECT_GT(std::abs(dot(5, 2) - dot(5, 5)), 1e-4);
  // Position 0 is the identity.
  EXPECT_TRUE(torch::allclose(rope->rotate(q, k, 0).first, q));
}

TEST(Positions, AlibiSlopesFollowThePaper) {
  auto c = tiny_config();
  c.n_heads = 8;
  auto alibi = blocks().positions.get("alibi", "test")(c);
  auto bias = alibi->attention_bias(8, 3, 3, 0);  // [H, T, S]
  // Slopes for 8 heads are 2^-1 ... 2^-8; query 2 sees key 0 at distance 2.
  EXPECT_NEAR(bias[0][2][0].item<float>(), -1.0, 1e-6);
  EXPECT_NEAR(bias[7][2][0].item<float>(), -2.0 / 256.0, 1e-7);
  EXPECT_EQ(bias[3][1][1].item<float>(), 0.0f);
}

TEST(Registry, UnknownNameListsValidOnes) {
  try {
    blocks().ffns.get("swishglu", "layer 3");
    FAIL() << "no error";
  } catch (const loom::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("layer 3"), std::string::npos) << what;
    EXPECT_NE(what.find("swishglu"), std::string::npos) << what;
    EXPECT_NE(what.find("swiglu"), std::string::npos) << what;
  }
}

// Decoder: logits [B, T, V]; encoder: class logits [B, C] with the last two tokens of the second
// sequence as padding.
torch::Tensor model_output(Model& model, const torch::Tensor& tokens) {
  if (model->config().causal()) return model->forward(tokens);
  auto padding = torch::zeros(tokens.sizes(), torch::kBool);
  padding[1].narrow(0, tokens.size(1) - 2, 2).fill_(true);
  return model->classify(tokens, padding);
}

// Every block, in every form it has (decoder and/or encoder): built, run forward and backward in
// fp32 and under bf16 autocast, saved and loaded.
TEST(Registry, EveryBlockBuildsRunsAndTrains) {
  blocks();
  int64_t encoder_runs = 0, decoder_runs = 0;
  for (const auto& info : block_catalogue()) {
    EXPECT_FALSE(info.description.empty());
    EXPECT_FALSE(info.paper.empty());
    for (const std::string arch : {"decoder", "encoder"}) {
      if (info.family == "mixer" && !info.has(arch == "decoder" ? "causal" : "bidirectional")) continue;
      SCOPED_TRACE(info.family + "/" + info.name + " in a " + arch);
      auto c = tiny_config();
      c.arch = arch;
      if (arch == "encoder") c.n_classes = 3, c.pooling = info.family == "norm" ? "mean" : "cls";
      if (info.family == "mixer") c.mixer = info.name;
      if (info.family == "position") c.position = info.name;
      if (info.family == "norm") c.norm = info.name;
      if (info.family == "ffn") c.ffn = info.name;
      c.validate("test");
      ++(arch == "decoder" ? decoder_runs : encoder_runs);
      torch::manual_seed(4);
      Model model(c);
      auto tokens = torch::randint(1, c.vocab_size, {2, 6});
      auto out = model_output(model, tokens);
      ASSERT_EQ(out.sizes(),
                arch == "decoder" ? (std::vector<int64_t>{2, 6, c.vocab_size}) : (std::vector<int64_t>{2, 3}));
      out.pow(2).mean().backward();
      for (auto& item : model->named_parameters()) {
        ASSERT_TRUE(item.value().grad().defined()) << item.key();
        EXPECT_TRUE(torch::isfinite(item.value().grad()).all().item<bool>()) << item.key();
      }
      // Saved to safetensors and loaded into a fresh model (another seed): the same outputs.
      const std::string path = testing::TempDir() + "/loom-registry-" + info.name + ".safetensors";
      save_safetensors(path, module_state(*model));
      torch::manual_seed(99);
      Model reloaded(c);
      load_module_state(*reloaded, load_safetensors(path), path);
      std::remove(path.c_str());
      {
        torch::NoGradGuard no_grad;
        model->eval();
        reloaded->eval();
        EXPECT_TRUE(torch::equal(model_output(reloaded, tokens), model_output(model, tokens)));
      }
      // The same under bf16 autocast, as training runs by default, with QK-norm on.
      c.qk_norm = true;
      Model bf16_model(c);
      torch::Tensor bf16_out;
      {
        compat::CpuAutocast autocast(true);
        bf16_out = model_output(bf16_model, tokens);
      }
      bf16_out.to(torch::kFloat).pow(2).mean().backward();
      for (auto& item : bf16_model->named_parameters()) {
        ASSERT_TRUE(item.value().grad().defined()) << item.key();
        EXPECT_TRUE(torch::isfinite(item.value().grad()).all().item<bool>()) << item.key();
      }
    }
  }
  EXPECT_GT(encoder_runs, 10);
  EXPECT_GT(decoder_runs, 10);
}

#include "loom/infer/generate.h"

TEST(Generate, GreedyWithCacheEqualsWithout) {
  for (const std::string position : {"learned", "rope"}) {
    SCOPED_TRACE(position);
    auto c = tiny_config();
    c.position = position;
    torch::manual_seed(5);
    Model model(c);
    GenerateOptions options;
    options.max_new_tokens = 15;
    options.sampling.temperature = 0;
    auto cached = generate(model, {3, 14, 15, 9}, options);
    options.use_cache = false;
    auto recomputed = generate(model, {3, 14, 15, 9}, options);
    EXPECT_EQ(cached.size(), 15u);
    EXPECT_EQ(cached, recomputed);
    // Sampling with the same seed is reproducible, and the context bounds the length.
    options.use_cache = true;
    options.sampling.temperature = 1.0;
    options.sampling.top_p = 0.9;
    options.sampling.seed = 7;
    options.max_new_tokens = 100;
    auto a = generate(model, {1, 2}, options), b = generate(model, {1, 2}, options);
    EXPECT_EQ(a, b);
    EXPECT_EQ(a.size(), static_cast<size_t>(c.max_seq_len - 2));
  }
}

TEST(Generate, BadPromptsAreErrors) {
  auto c = tiny_config();
  Model model(c);
  GenerateOptions options;
  EXPECT_THROW(generate(model, {}, options), loom::Error);
  EXPECT_THROW(generate(model, std::vector<int64_t>(c.max_seq_len + 1, 1), options), loom::Error);
  EXPECT_THROW(generate(model, {static_cast<int64_t>(c.vocab_size)}, options), loom::Error);
}

TEST(Sampler, TopKOneIsGreedyAndTopPKeepsTheMass) {
  auto logits = torch::tensor({0.1f, 3.0f, 2.9f, -1.0f});
  Sampler top1({1.0, 1, 1.0, 3});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(top1(logits), 1);
  // Token 1 and 2 hold ~95% of the mass: top-p 0.9 never picks 0 or 3.
  Sampler nucleus({1.0, 0, 0.9, 11});
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(nucleus(logits));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 2}));
}

#include <fstream>
#include <sstream>

// Adding a block: besides its docs/blocks.md line (below) and its fast-engine declaration (the
// registry refuses a block without one), every registered name has a reference test named after
// it: a test in tests/*.cpp whose suite is the name in CamelCase, or whose name starts with it
// (case aside): `local_attention` -> TEST(Attention, LocalAttention...).
TEST(Registry, EveryBlockHasAReferenceTestNamedAfterIt) {
  const std::regex test_macro(R"(TEST(?:_P|_F)?\(\s*(\w+)\s*,\s*(\w+)\s*\))");
  std::vector<std::pair<std::string, std::string>> tests;
  auto lower = [](std::string s) {
    for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  for (const auto& entry : std::filesystem::directory_iterator(std::string(LOOM_SOURCE_DIR) + "/tests")) {
    if (entry.path().extension() != ".cpp") continue;
    std::ifstream in(entry.path());
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (std::sregex_iterator it(text.begin(), text.end(), test_macro), end; it != end; ++it)
      tests.emplace_back(lower((*it)[1]), lower((*it)[2]));
  }
  ASSERT_GT(tests.size(), 100u);
  blocks();
  for (const auto& info : block_catalogue()) {
    std::string camel;  // local_attention -> localattention (compared lower-case)
    for (char ch : info.name)
      if (ch != '_') camel += ch;
    const bool found = std::any_of(tests.begin(), tests.end(),
                                   [&](const auto& t) { return t.first == camel || t.second.rfind(camel, 0) == 0; });
    EXPECT_TRUE(found) << info.family << " '" << info.name << "' has no reference test named after it: add one "
                       << "whose suite is its CamelCase name or whose name starts with it (docs/architecture.md)";
    EXPECT_TRUE(info.runs_on_fast_engine.has_value()) << info.name;
  }
}

TEST(Docs, EveryRegisteredBlockIsDocumented) {
  std::ifstream in(std::string(LOOM_SOURCE_DIR) + "/docs/blocks.md");
  ASSERT_TRUE(in) << "docs/blocks.md is missing";
  std::stringstream text;
  text << in.rdbuf();
  const std::string doc = text.str();
  blocks();
  for (const auto& info : block_catalogue()) {
    // One table row per block: | family | `name` | description | paper |
    const std::string row = "| " + info.family + " | `" + info.name + "` | ";
    const auto at = doc.find(row);
    ASSERT_NE(at, std::string::npos) << info.family << "/" << info.name << " has no line in docs/blocks.md";
    const std::string line = doc.substr(at, doc.find('\n', at) - at);
    EXPECT_NE(line.find(info.paper), std::string::npos) << "docs/blocks.md line lacks the paper: " << line;
    // The last column repeats the block's fast-engine declaration.
    const std::string fast = *info.runs_on_fast_engine ? "| yes |" : "| no |";
    EXPECT_EQ(line.substr(line.size() - std::min(line.size(), fast.size())), fast)
        << "docs/blocks.md's fast-engine column disagrees with the registration: " << line;
  }
}

TEST(Positions, RopeAdjacentIsHalfRopeWithPermutedCoordinates) {
  auto c = tiny_config();
  auto half = blocks().positions.get("rope", "test")(c);
  auto adjacent = blocks().positions.get("rope_adjacent", "test")(c);
  const int64_t d = c.head_dim();
  auto x = torch::randn({2, 5, 3, d});
  // Interleave: x_perm[2i] = x[i], x_perm[2i + 1] = x[i + d/2].
  auto perm = torch::stack({torch::arange(d / 2), torch::arange(d / 2) + d / 2}, 1).flatten();
  auto rotated_half = half->rotate(x, x, 3).first;
  auto rotated_adjacent = adjacent->rotate(x.index_select(-1, perm), x, 3).first;
  EXPECT_TRUE(torch::allclose(rotated_adjacent, rotated_half.index_select(-1, perm), 1e-5, 1e-6));
}

TEST(Norms, DyTIsScaledTanh) {
  auto c = tiny_config();
  auto dyt = blocks().norms.get("dyt", "test")(c, c.d_model);
  auto x = torch::randn({2, 3, c.d_model}) * 4;
  EXPECT_TRUE(torch::allclose(dyt->forward(x), torch::tanh(0.5 * x)));  // alpha 0.5, weight 1, bias 0
  torch::NoGradGuard no_grad;
  param(*dyt, "alpha").fill_(2.0);
  param(*dyt, "weight").fill_(3.0);
  param(*dyt, "bias").fill_(-1.0);
  EXPECT_TRUE(torch::allclose(dyt->forward(x), 3 * torch::tanh(2 * x) - 1));
}

TEST(Block, NormPlacementsFollowTheirEquations) {
  torch::manual_seed(8);
  auto c = tiny_config();
  c.position = "none";
  auto position = blocks().positions.get("none", "test")(c);
  const MixerContext ctx{position.get(), 0, nullptr};
  auto x = torch::randn({2, 5, c.d_model});
  for (const std::string placement : {"pre", "post", "sandwich", "normformer"}) {
    SCOPED_TRACE(placement);
    c.norm_placement = placement;
    TransformerBlock block(c, 0);
    block->eval();
    auto& b = *block;
    auto f = [&](const torch::Tensor& t) { return b.mixer->forward(t, ctx); };
    auto g = [&](const torch::Tensor& t) { return b.ffn->forward(t); };
    const auto actual = block->forward(x, ctx);
    torch::Tensor expected;
    if (placement == "pre") {
      auto h = x + f(b.norm1->forward(x));
      expected = h + g(b.norm2->forward(h));
    } else if (placement == "post") {
      auto h = b.norm1->forward(x + f(x));
      expected = b.norm2->forward(h + g(h));
    } else if (placement == "sandwich") {
      auto h = x + b.norm1_out->forward(f(b.norm1->forward(x)));
      expected = h + b.norm2_out->forward(g(b.norm2->forward(h)));
    } else {
      auto h = x + b.norm1_out->forward(f(b.norm1->forward(x)));
      expected = h + g(b.norm2->forward(h));
      // The FFN normalizes its hidden layer: w_out(norm(gelu(w_in x))).
      auto mid =
          torch::gelu(torch::nn::functional::linear(h, param(*b.ffn, "w_in.weight"), param(*b.ffn, "w_in.bias")));
      auto normed = torch::layer_norm(mid, {c.d_ff}, param(*b.ffn, "mid_norm.weight"), param(*b.ffn, "mid_norm.bias"),
                                      c.norm_eps);
      EXPECT_TRUE(torch::allclose(
          g(h), torch::nn::functional::linear(normed, param(*b.ffn, "w_out.weight"), param(*b.ffn, "w_out.bias")), 1e-5,
          1e-6));
      // Head scales multiply each head's output: all zero leaves only the output bias.
      {
        torch::NoGradGuard no_grad;
        param(*b.mixer, "head_scale").zero_();
      }
      EXPECT_TRUE(torch::allclose(f(x), param(*b.mixer, "wo.bias").expand_as(x), 1e-6, 1e-7));
    }
    EXPECT_TRUE(torch::allclose(actual, expected, 1e-5, 1e-6));
  }
  c.norm_placement = "middle";
  EXPECT_THROW(c.validate("test"), loom::Error);
}

TEST(Moe, OneExpertTopOneIsTheDenseSwiGLU) {
  torch::manual_seed(9);
  auto c = tiny_config();
  c.moe.n_experts = 1;
  c.moe.top_k = 1;
  auto moe = blocks().ffns.get("moe", "test")(c, 0);
  auto dense = blocks().ffns.get("swiglu", "test")(c, 0);
  {
    torch::NoGradGuard no_grad;
    param(*moe, "w_in").normal_();
    param(*moe, "w_out").normal_();
    param(*dense, "w_in.weight").copy_(param(*moe, "w_in")[0]);
    param(*dense, "w_in.bias").zero_();
    param(*dense, "w_out.weight").copy_(param(*moe, "w_out")[0]);
    param(*dense, "w_out.bias").zero_();
  }
  auto x = torch::randn({2, 7, c.d_model});
  EXPECT_TRUE(torch::allclose(moe->forward(x), dense->forward(x), 1e-5, 1e-5));
  EXPECT_NEAR(moe->aux_loss().item<double>(), 1.0, 1e-6);  // one expert: f = P = 1
}

TEST(Moe, CapacityDropsOverflowAndBalancedRoutingHasUnitLoss) {
  torch::manual_seed(10);
  auto c = tiny_config();
  c.moe.n_experts = 4;
  c.moe.top_k = 1;
  c.moe.capacity_factor = 0.5;  // capacity = ceil(0.5 * 16 / 4) = 2 tokens per expert
  auto moe = blocks().ffns.get("moe", "test")(c, 0);
  {
    torch::NoGradGuard no_grad;
    param(*moe, "w_in").normal_();
    param(*moe, "w_out").normal_();
    param(*moe, "router.weight").zero_();  // uniform router: every token ties, topk picks expert 0
  }
  auto x = torch::randn({2, 8, c.d_model});
  auto y = moe->forward(x).reshape({16, c.d_model});
  auto nonzero_rows = (y.abs().sum(-1) > 0).sum().item<int64_t>();
  EXPECT_EQ(nonzero_rows, 2);  // all 16 tokens chose one expert; only its capacity of 2 got through
  // Uniform probabilities: P_e = 1/4; all assignments to one expert: f = (1, 0, 0, 0): loss = 4 * 1/4 = 1.
  EXPECT_NEAR(moe->aux_loss().item<double>(), 1.0, 1e-6);
  // A router sure of expert 0 (P_0 ~ 1, f_0 = 1) has the worst balance: loss ~ n_experts.
  {
    torch::NoGradGuard no_grad;
    param(*moe, "router.weight")[0].fill_(10.0);
  }
  moe->forward(torch::rand({2, 8, c.d_model}) + 0.1);
  EXPECT_NEAR(moe->aux_loss().item<double>(), 4.0, 1e-3);
  auto z = moe->forward(x);
  z.sum().backward();
  EXPECT_TRUE(param(*moe, "w_in").grad().defined());
}

TEST(Model, WeightDecayOnlyOnProjectionMatrices) {
  auto c = tiny_config();
  c.layers = {"attention", "mamba"};
  c.mamba.d_state = 4;
  Model model(c);
  std::set<std::string> decayed;
  for (auto& item : model->named_parameters())
    if (model->is_decayed(item.key(), item.value())) decayed.insert(item.key());
  EXPECT_TRUE(decayed.count("layers.0.mixer.wqkv.weight"));
  EXPECT_TRUE(decayed.count("layers.1.mixer.in_proj.weight"));
  EXPECT_TRUE(decayed.count("layers.0.ffn.w_out.weight"));
  for (const char* name : {"tok_emb.weight", "pos.weight", "layers.0.norm1.weight", "layers.0.norm1.bias",
                           "layers.0.mixer.wqkv.bias", "layers.1.mixer.A_log", "layers.1.mixer.D", "norm_f.weight"})
    EXPECT_FALSE(decayed.count(name)) << name;
}

TEST(Attention, LocalAttentionAsWideAsTheSequenceIsFullAttention) {
  torch::manual_seed(14);
  auto c = tiny_config();
  auto position = blocks().positions.get("rope", "test")(c);
  auto full = blocks().mixers.get("attention", "test")(c, 0);
  c.local_attention.window = 9;
  auto local = blocks().mixers.get("local_attention", "test")(c, 0);
  {
    torch::NoGradGuard no_grad;
    for (auto& item : full->named_parameters()) param(*local, item.key()).copy_(item.value());
  }
  MixerContext ctx{position.get(), 0, nullptr};
  auto x = torch::randn({2, 9, c.d_model});
  EXPECT_TRUE(torch::allclose(local->forward(x, ctx), full->forward(x, ctx), 1e-5, 1e-6));
  // A narrower window changes every output past the window, and none before it.
  c.local_attention.window = 3;
  auto narrow = blocks().mixers.get("local_attention", "test")(c, 0);
  {
    torch::NoGradGuard no_grad;
    for (auto& item : full->named_parameters()) param(*narrow, item.key()).copy_(item.value());
  }
  auto a = narrow->forward(x, ctx), b = full->forward(x, ctx);
  EXPECT_TRUE(torch::allclose(a.narrow(1, 0, 3), b.narrow(1, 0, 3), 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(a.narrow(1, 3, 6), b.narrow(1, 3, 6), 1e-3, 1e-3));
  // Window 1: each position attends only to itself, so the output is wo(v_t).
  c.local_attention.window = 1;
  auto self_only = blocks().mixers.get("local_attention", "test")(c, 0);
  auto w = param(*self_only, "wqkv.weight"), bias = param(*self_only, "wqkv.bias");
  const int64_t hd = c.n_heads * c.head_dim();
  auto v = torch::nn::functional::linear(x, w.narrow(0, 2 * hd, hd), bias.narrow(0, 2 * hd, hd));
  auto expected = torch::nn::functional::linear(v, param(*self_only, "wo.weight"), param(*self_only, "wo.bias"));
  EXPECT_TRUE(torch::allclose(self_only->forward(x, ctx), expected, 1e-5, 1e-6));
}

TEST(Attention, LocalAndQkNormModelsDecodeIncrementally) {
  auto c = tiny_config();
  c.layers = {"local_attention", "attention"};
  c.local_attention.window = 4;
  c.qk_norm = true;
  c.position = "rope";
  c.validate("test");
  torch::manual_seed(15);
  Model model(c);
  model->eval();
  auto tokens = torch::randint(c.vocab_size, {2, 14});
  {
    torch::NoGradGuard no_grad;
    auto full = model->forward(tokens);
    auto cache = model->make_cache(2, c.max_seq_len);
    std::vector<torch::Tensor> pieces{model->forward(tokens.narrow(1, 0, 6), 0, &cache)};
    for (int64_t i = 6; i < 14; ++i) pieces.push_back(model->forward(tokens.narrow(1, i, 1), i, &cache));
    EXPECT_TRUE(torch::allclose(torch::cat(pieces, 1), full, 1e-4, 1e-5));
  }
  model->train();
  model->forward(tokens).pow(2).mean().backward();
  auto params = model->named_parameters();
  ASSERT_TRUE(params.contains("layers.0.mixer.q_norm.weight"));
  EXPECT_GT(params["layers.0.mixer.q_norm.weight"].grad().abs().sum().item<float>(), 0);
  EXPECT_GT(params["layers.1.mixer.k_norm.weight"].grad().abs().sum().item<float>(), 0);
}

TEST(Attention, LinearAttentionCausalEqualsItsQuadraticMaskedForm) {
  torch::manual_seed(16);
  auto c = tiny_config();
  auto position = blocks().positions.get("none", "test")(c);
  auto linear = blocks().mixers.get("linear_attention", "test")(c, 0);
  const int64_t b = 2, t = 7, h = c.n_heads, d = c.head_dim();
  auto x = torch::randn({b, t, c.d_model});
  // Reference: A = phi(Q) phi(K)^T, lower-triangular, rows normalized; out = A V.
  auto qkv = torch::nn::functional::linear(x, param(*linear, "wqkv.weight"), param(*linear, "wqkv.bias"))
                 .view({b, t, 3, h, d})
                 .permute({2, 0, 3, 1, 4});  // [3, B, H, T, D]
  auto phi_q = torch::elu(qkv[0]) + 1, phi_k = torch::elu(qkv[1]) + 1;
  auto a = phi_q.matmul(phi_k.transpose(-2, -1)).tril();  // [B, H, T, T]
  auto out = (a / a.sum(-1, true)).matmul(qkv[2]).transpose(1, 2).reshape({b, t, h * d});
  auto expected = torch::nn::functional::linear(out, param(*linear, "wo.weight"), param(*linear, "wo.bias"));
  EXPECT_TRUE(torch::allclose(linear->forward(x, MixerContext{position.get(), 0, nullptr}), expected, 1e-4, 1e-5));
  // And recurrently, one token at a time through the running sums.
  c.layers = {"linear_attention", "linear_attention"};
  c.position = "rope";
  Model model(c);
  torch::NoGradGuard no_grad;
  auto tokens = torch::randint(c.vocab_size, {2, 10});
  auto full = model->forward(tokens);
  auto cache = model->make_cache(2, c.max_seq_len);
  std::vector<torch::Tensor> pieces{model->forward(tokens.narrow(1, 0, 3), 0, &cache)};
  for (int64_t i = 3; i < 10; ++i) pieces.push_back(model->forward(tokens.narrow(1, i, 1), i, &cache));
  EXPECT_TRUE(torch::allclose(torch::cat(pieces, 1), full, 1e-4, 1e-5));
}

TEST(Registry, IncompatibleCombinationsNameTheLayer) {
  auto error_of = [](const ModelConfig& c) { return error_message([&] { c.validate("r.yaml"); }); };
  auto c = tiny_config();
  c.layers = {"mamba", "mamba"};
  c.position = "rope";
  auto e = error_of(c);
  EXPECT_NE(e.find("'rope' acts inside attention"), std::string::npos) << e;
  c.layers = {"attention", "linear_attention"};
  c.position = "alibi";
  e = error_of(c);
  EXPECT_NE(e.find("layer 1"), std::string::npos) << e;
  c.layers = {"mamba", "attention"};
  c.position = "rope";
  EXPECT_EQ(error_of(c), "no error");
}

TEST(Attention, TracksTheLargestLogit) {
  torch::manual_seed(18);
  auto c = tiny_config();
  c.n_layers = 1;
  c.position = "none";
  Model model(c);
  auto& block = *model->layers[0]->as<TransformerBlockImpl>();
  torch::NoGradGuard no_grad;
  param(*block.mixer, "wqkv.weight").mul_(25.0);  // logits of order 1, so their maximum is distinct
  auto tokens = torch::randint(c.vocab_size, {2, 6});
  model->forward(tokens);
  EXPECT_TRUE(std::isnan(model->max_attention_logit()));
  model->track_attention_logits(true);
  model->forward(tokens);
  // Reference: q k^T / sqrt(D) over the allowed (causal) pairs of the one layer.
  auto x = block.norm1->forward(model->tok_emb(tokens));
  auto qkv = torch::nn::functional::linear(x, param(*block.mixer, "wqkv.weight"), param(*block.mixer, "wqkv.bias"))
                 .view({2, 6, 3, c.n_heads, c.head_dim()})
                 .permute({2, 0, 3, 1, 4});
  auto scores = qkv[0].matmul(qkv[1].transpose(-2, -1)) / std::sqrt(static_cast<double>(c.head_dim()));
  auto allowed = scores.masked_fill(torch::ones({6, 6}, torch::kBool).triu(1), -1e30);
  const double first = allowed.max().item<double>();
  EXPECT_NEAR(model->max_attention_logit(), first, 1e-4);
  // A new step starts a new maximum; its later micro-batches raise it and never lower it.
  // One token alone (no positions): its logit is its own q.k, the diagonal; take the token whose
  // largest one over the heads is smallest.
  auto self = scores.diagonal(0, -2, -1).amax(1);  // [B, T]
  const int64_t at = self.argmin().item<int64_t>();
  const double own = self.flatten()[at].item<double>();
  auto alone = tokens.flatten()[at].view({1, 1});
  ASSERT_LT(own, first - 1e-3);
  model->track_attention_logits(true);
  model->forward(alone);
  EXPECT_NEAR(model->max_attention_logit(), own, 1e-4);
  model->forward(tokens);
  EXPECT_NEAR(model->max_attention_logit(), first, 1e-4);
  model->forward(alone);
  EXPECT_NEAR(model->max_attention_logit(), first, 1e-4);
}
