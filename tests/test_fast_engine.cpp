// What the fast engine runs is declared, not listed: every block registered with
// fast_engine(true) and every option declared AtInference::kFastEngine (nn/config.h). The parity
// sweep builds every combination of those declarations and checks the fast engine against the
// Model's forward and its cached generation; the other tests check that whatever is not declared
// sends make_engine to the reference engine, and says why.
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <random>
#include <set>

#include "loom/checkpoint/checkpoint.h"
#include "loom/core/log.h"
#include "loom/infer/fast_engine.h"
#include "loom/nn/blocks.h"
#include "test_util.h"

using namespace loom;

namespace {

// The causal blocks of `family` that declare the fast engine runs them, in registration order.
std::vector<std::string> fast_blocks(const std::string& family) {
  blocks();
  std::vector<std::string> out;
  for (const auto& info : block_catalogue())
    if (info.family == family && *info.runs_on_fast_engine && (family != "mixer" || info.has("causal")))
      out.push_back(info.name);
  return out;
}

std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, std::mt19937_64& rng) {
  std::vector<int64_t> out(n);
  for (auto& t : out) t = static_cast<int64_t>(rng() % vocab);
  return out;
}

// Every option the fast engine claims, by name: block choices from the registry, the option
// values it declares it runs at any value (AtInference::kFastEngine) varied over a few values
// each, and the sizes small. One config per combination of blocks x key/value heads x tying x
// biases x embedding scale; rope_theta, norm_eps and layers of their own widths (a fixed head_dim,
// per-layer heads and FFN widths, as architecture search's sub-models) vary along the sweep.
std::vector<ModelConfig> swept_configs() {
  std::vector<ModelConfig> out;
  const auto mixers = fast_blocks("mixer"), positions = fast_blocks("position"), norms = fast_blocks("norm"),
             ffns = fast_blocks("ffn");
  // Each mixer alone, and every fast mixer in one model (a hybrid, layer by layer).
  std::vector<std::vector<std::string>> layer_lists;
  for (const auto& m : mixers) layer_lists.push_back({m, m});
  if (mixers.size() > 1) layer_lists.push_back(mixers);
  int64_t index = 0;
  for (const auto& layers : layer_lists)
    for (const auto& position : positions)
      for (const auto& norm : norms)
        for (const auto& ffn : ffns)
          for (int64_t kv_heads : {0, 2, 1})  // MHA, GQA, MQA
            for (bool tied : {true, false})
              for (bool bias : {true, false})
                for (bool embed_scale : {false, true}) {
                  ModelConfig c;
                  c.vocab_size = 61, c.d_model = 32, c.n_heads = 4, c.d_ff = 40, c.max_seq_len = 24;
                  c.n_layers = static_cast<int64_t>(layers.size());
                  c.layers = layers;
                  c.position = position, c.norm = norm, c.ffn = ffn;
                  c.n_kv_heads = kv_heads, c.tie_embeddings = tied, c.bias = bias, c.embed_scale = embed_scale;
                  c.local_attention.window = 4;  // cuts into the prompts below
                  c.rope_theta = index % 2 ? 500.0 : 10000.0;
                  c.norm_eps = index % 3 ? 1e-5 : 1e-6;
                  if (index % 4 == 3) {
                    c.fixed_head_dim = 12;  // 4 x 12 != d_model
                    c.layer_heads = {4, 2};
                    c.layer_d_ff = {40, 24};
                  }
                  c.validate("sweep");
                  out.push_back(c);
                  ++index;
                }
  return out;
}

torch::Tensor full_logits(Model& model, const std::vector<int64_t>& tokens) {
  return model->forward(torch::tensor(tokens).unsqueeze(0))[0];  // [T, V]
}

}  // namespace

// The central parity test: every configuration the declarations allow, in fp32, against the
// Model: two slots' prompts in one call (7 and 5 tokens: several rows per slot, a window cutting
// in), then three single-token steps of both slots together; each slot's logits equal the Model's
// full forward at that position and the Model's cached decoding (prefill, then one token at a
// time on its KVCache).
TEST(FastEngine, ParitySweepOverEveryDeclaredConfiguration) {
  torch::NoGradGuard no_grad;
  const auto configs = swept_configs();
  // Every fast block appears, and the sweep is the full product.
  EXPECT_GE(fast_blocks("mixer").size(), 2u);
  EXPECT_GE(fast_blocks("position").size(), 5u);
  EXPECT_GE(fast_blocks("norm").size(), 2u);
  EXPECT_GE(fast_blocks("ffn").size(), 4u);
  std::printf("[ sweep    ] %zu configurations\n", configs.size());
  std::mt19937_64 rng(17);
  double worst = 0;
  for (size_t i = 0; i < configs.size(); ++i) {
    const ModelConfig& c = configs[i];
    SCOPED_TRACE(fmt::format(
        "config {}: layers [{}] heads [{}] d_ff [{}] position {} norm {} ffn {} kv_heads {} tied {} bias {} "
        "embed_scale {}",
        i, fmt::join(c.layers, ", "), fmt::join(c.layer_heads, ", "), fmt::join(c.layer_d_ff, ", "), c.position, c.norm,
        c.ffn, c.n_kv_heads, c.tie_embeddings, c.bias, c.embed_scale));
    std::string why;
    ASSERT_TRUE(fast_engine_supports(c, &why)) << why;
    torch::manual_seed(static_cast<uint64_t>(i));
    Model model(c);
    for (auto& p : model->parameters()) p.normal_(0, 0.3);  // every part of the network matters
    model->eval();
    const auto a = random_tokens(10, c.vocab_size, rng), b = random_tokens(8, c.vocab_size, rng);
    const auto ref_a = full_logits(model, a), ref_b = full_logits(model, b);
    // The Model's cached generation of a: prefill 7 tokens, then one at a time.
    KVCache cache = model->make_cache(1, c.max_seq_len);
    std::vector<torch::Tensor> cached_a{
        model->forward(torch::tensor(std::vector<int64_t>(a.begin(), a.begin() + 7)).unsqueeze(0), 0, &cache)[0][6]};
    for (int64_t p = 7; p < 10; ++p)
      cached_a.push_back(model->forward(torch::tensor({a[p]}).unsqueeze(0), p, &cache)[0][0]);

    FastEngineOptions options;
    options.engine.slots = 2;
    options.weights = WeightFormat::kF32;
    Model copy(c);  // the engine moves the float weights into its arena: give it its own model
    {
      auto src = model->named_parameters();
      for (auto& p : copy->named_parameters()) p.value().copy_(src[p.key()]);
    }
    copy->eval();
    auto engine = make_fast_engine(copy, {}, options);
    auto expect_row = [&](const torch::Tensor& got, const torch::Tensor& want, const char* what, int64_t position) {
      const double diff = (got - want).abs().max().item<double>();
      worst = std::max(worst, diff);
      EXPECT_TRUE(torch::allclose(got, want, 1e-4, 1e-4)) << what << " at " << position << ": max diff " << diff;
    };
    auto out = engine->forward({1, 0}, {{a.begin(), a.begin() + 7}, {b.begin(), b.begin() + 5}});
    expect_row(out[0], ref_a[6], "a vs forward", 6);
    expect_row(out[0], cached_a[0], "a vs cached", 6);
    expect_row(out[1], ref_b[4], "b vs forward", 4);
    for (int64_t step = 0; step < 3; ++step) {
      out = engine->forward({0, 1}, {{b[5 + step]}, {a[7 + step]}});
      expect_row(out[0], ref_b[5 + step], "b vs forward", 5 + step);
      expect_row(out[1], ref_a[7 + step], "a vs forward", 7 + step);
      expect_row(out[1], cached_a[1 + step], "a vs cached", 7 + step);
    }
    if (HasFailure()) break;  // one configuration's report is enough
  }
  std::printf("[ sweep    ] largest difference from the Model: %.3g\n", worst);
}

// The declarations are the whole truth: an option without one runs on the fast engine at its
// default only. Every such option, set to another value, makes the fast engine refuse the model
// and name the option.
TEST(FastEngine, UndeclaredOptionsRunOnlyAtTheirDefault) {
  int64_t checked = 0;
  for (const auto& option : option_values(ModelConfig())) {
    if (option.at_inference || option.block) continue;
    // Another value of the same type, set through the recipe reader as a user would.
    std::string other;
    if (option.value == "true" || option.value == "false") other = option.value == "true" ? "false" : "true";
    else if (option.value.find_first_not_of("0123456789") == std::string::npos)
      other = std::to_string(std::stoll(option.value) + 1);
    else other = option.value + "x";
    YAML::Node node;
    node[option.key] = YAML::Load(other);
    ModelConfig c;
    YamlReader reader(node, "test");
    c.visit(reader);
    std::string why;
    EXPECT_FALSE(fast_engine_supports(c, &why)) << option.key << " = " << other;
    EXPECT_NE(why.find("model." + option.key), std::string::npos) << why;
    ++checked;
  }
  EXPECT_GE(checked, 3);  // arch, norm_placement, qk_norm at least
  // A block's options follow the block: a window is fine when local_attention runs on the fast
  // engine, Mamba's state size does not matter to a model without Mamba.
  ModelConfig c;
  c.local_attention.window = 7, c.mamba.d_state = 3, c.moe.n_experts = 2, c.moe.top_k = 1;
  EXPECT_TRUE(fast_engine_supports(c));
  c.ffn = "moe";
  std::string why;
  EXPECT_FALSE(fast_engine_supports(c, &why));
  EXPECT_NE(why.find("ffn 'moe'"), std::string::npos) << why;
}

// make_engine picks the fast engine for what it runs and the reference engine for anything else,
// and logs which and why.
TEST(FastEngine, MakeEngineFallsBackToTheReferenceEngineAndSaysWhy) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4);
  logger().sinks().push_back(sink);
  auto engine_for = [](const ModelConfig& c) {
    LoadedModel loaded;
    loaded.recipe.model = c;
    loaded.model = Model(c);
    return make_engine(loaded, {});
  };
  ModelConfig c;
  c.vocab_size = 50, c.d_model = 32, c.n_layers = 2, c.n_heads = 2, c.d_ff = 48, c.max_seq_len = 16;
  EXPECT_STREQ(engine_for(c)->name(), "fast");
  EXPECT_NE(sink->last_formatted(1).at(0).find("engine: fast"), std::string::npos);
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{{"qk_norm", "true"},
                                                                                   {"norm_placement", "post"},
                                                                                   {"norm", "dyt"},
                                                                                   {"position", "alibi"},
                                                                                   {"layers", "[attention, mamba]"},
                                                                                   {"ffn", "moe"}}) {
    YAML::Node node;
    node[key] = YAML::Load(value);
    ModelConfig other = c;
    YamlReader reader(node, "test");
    other.visit(reader);
    other.validate("test");
    EXPECT_STREQ(engine_for(other)->name(), "reference") << key;
    const std::string logged = sink->last_formatted(1).at(0);
    EXPECT_NE(logged.find("engine: reference"), std::string::npos) << logged;
    EXPECT_NE(logged.find(key == "layers" ? "mamba" : value), std::string::npos) << logged;
  }
  auto& sinks = logger().sinks();
  sinks.erase(std::find(sinks.begin(), sinks.end(), sink));
}
