// Quantization (int8, Q4_0 by rounding and by GPTQ), quantized checkpoints, and the fast engine
// against the Model's own forward.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <set>

#include "loom/checkpoint/checkpoint.h"
#include "loom/convert/quantize_model.h"
#include "loom/infer/fast_engine.h"
#include "loom/infer/generate.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/safetensors.h"
#include "loom/quant/quantize.h"
#include "loom/train/trainer.h"
#include "test_util.h"
#include "tiny_run.h"

using namespace loom;

namespace {

float half_to_float(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// llama.cpp's quantize_row_q4_0_ref, written out plainly for one block: the reference the
// vectorized-by-torch and loop implementations must equal byte for byte.
std::vector<uint8_t> q4_0_block_reference(const float* x) {
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j)
    if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
  const float d = max / -8;
  const float id = d ? 1.0f / d : 0.0f;
  std::vector<uint8_t> out(18);
  const uint16_t bits = c10::Half(d).x;
  std::memcpy(out.data(), &bits, 2);
  for (int j = 0; j < 16; ++j) {
    const uint8_t a = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f))));
    const uint8_t b = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 8.5f))));
    out[2 + j] = a | (b << 4);
  }
  return out;
}

ModelConfig tiny_config(const std::string& flavour) {
  ModelConfig c;
  c.vocab_size = 97, c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.d_ff = 96, c.max_seq_len = 40;
  if (flavour == "llama" || flavour == "llama_adjacent" || flavour == "llama_window") {
    c.position = flavour == "llama_adjacent" ? "rope_adjacent" : "rope";
    c.norm = "rmsnorm", c.ffn = "swiglu", c.bias = false, c.tie_embeddings = false, c.n_kv_heads = 2;
    if (flavour == "llama_window") c.layers = {"local_attention", "attention"}, c.local_attention.window = 5;
  } else if (flavour == "gpt") {
    c.position = "learned", c.norm = "layernorm", c.ffn = "gelu", c.bias = true, c.tie_embeddings = true;
  } else if (flavour == "sinusoidal") {
    c.position = "sinusoidal", c.ffn = "geglu", c.n_kv_heads = 1, c.embed_scale = true;
  } else if (flavour == "relu_nopos") {
    c.position = "none", c.ffn = "relu", c.tie_embeddings = false;
  }
  c.validate("test");
  return c;
}

Model random_model(const ModelConfig& c, uint64_t seed = 1) {
  torch::manual_seed(seed);
  Model m(c);
  torch::NoGradGuard no_grad;
  // Larger than the init so that every part of the network matters.
  for (auto& p : m->parameters()) p.normal_(0, 0.2);
  m->eval();
  return m;
}

std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> out(n);
  for (auto& t : out) t = static_cast<int64_t>(rng() % vocab);
  return out;
}

torch::Tensor model_logits(Model& m, const std::vector<int64_t>& tokens) {
  torch::NoGradGuard no_grad;
  return m->forward(torch::tensor(tokens).unsqueeze(0))[0];  // [T, V]
}

}  // namespace

TEST(Quantize, Int8PerRowScalesAndRoundTrip) {
  torch::manual_seed(0);
  auto w = torch::randn({5, 70});
  w[2].zero_();
  const auto q = quantize_rtn(w, QuantFormat::kInt8);
  ASSERT_EQ(q.q.scalar_type(), torch::kChar);
  EXPECT_TRUE(torch::allclose(q.scale, w.abs().amax(1) / 127));
  EXPECT_EQ(q.q.abs().amax(1)[0].item<int>(), 127);  // the largest weight of a row maps to +-127
  EXPECT_EQ(q.q[2].abs().sum().item<int>(), 0);      // an all-zero row stays zero
  auto error = (dequantize(q) - w).abs();
  EXPECT_TRUE((error <= q.scale.unsqueeze(1) / 2 + 1e-7).all().item<bool>());
}

TEST(Quantize, Q4_0MatchesLlamaCppBlockByBlock) {
  torch::manual_seed(1);
  auto w = torch::randn({3, 96});
  w[1].narrow(0, 32, 32).zero_();  // an all-zero block: d = 0, every nibble 8
  w[2][5] = 4.0f;                  // a positive extreme: d < 0
  w[0][40] = -5.0f;                // a negative extreme: d > 0
  const auto q = quantize_rtn(w, QuantFormat::kQ4_0);
  ASSERT_EQ(q.q.sizes(), (std::vector<int64_t>{3, 3 * 18}));
  const uint8_t* bytes = q.q.data_ptr<uint8_t>();
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t b = 0; b < 3; ++b) {
      const auto ref = q4_0_block_reference(w[r].data_ptr<float>() + b * 32);
      EXPECT_EQ(0, std::memcmp(ref.data(), bytes + (r * 3 + b) * 18, 18)) << "row " << r << " block " << b;
    }
  EXPECT_EQ(bytes[(1 * 3 + 1) * 18 + 2], 0x88);
  // Nibble order: element j in the low nibble of byte j, element j + 16 in the high nibble.
  auto deq = dequantize(q);
  const float d = half_to_float(bytes);
  EXPECT_FLOAT_EQ(deq[0][0].item<float>(), d * ((bytes[2] & 15) - 8));
  EXPECT_FLOAT_EQ(deq[0][16].item<float>(), d * ((bytes[2] >> 4) - 8));
  EXPECT_FLOAT_EQ(deq[2][5].item<float>(), half_to_float(bytes + 2 * 3 * 18) * -8);  // the extreme is exact up to fp16
  // Everything else within half a step, but for values past 7 steps on the side opposite the
  // block's extreme (levels span -8..7 steps): those clamp, within a full step.
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t b = 0; b < 3; ++b) {
      const float step = std::fabs(half_to_float(bytes + (r * 3 + b) * 18));
      for (int64_t j = 0; j < 32; ++j) {
        const float x = w[r][b * 32 + j].item<float>(), y = deq[r][b * 32 + j].item<float>();
        const float bound = std::fabs(x) > 7 * step ? step : step / 2;
        EXPECT_LE(std::fabs(x - y), bound + 4e-3 * step + 1e-6) << r << " " << b << " " << j;
      }
    }
  // Rounding the dequantized weights again gives the same blocks (what `export --type q4_0` of an
  // RTN checkpoint relies on).
  EXPECT_TRUE(torch::equal(quantize_rtn(deq, QuantFormat::kQ4_0).q, q.q));
  EXPECT_NE(error_message([&] {
              quantize_rtn(torch::randn({2, 40}), QuantFormat::kQ4_0);
            }).find("multiple of 32"),
            std::string::npos);
}

TEST(Quantize, GptqEqualsRoundingWhenInputsAreUncorrelated) {
  // A diagonal Hessian propagates no error between columns: GPTQ is round to nearest.
  torch::manual_seed(2);
  auto w = torch::randn({8, 64});
  auto h = torch::diag(torch::rand({64}) + 0.5);
  const auto gptq = quantize_gptq(w, h);
  const auto rtn = quantize_rtn(w, QuantFormat::kQ4_0);
  EXPECT_TRUE(torch::equal(gptq.q, rtn.q));
}

TEST(Quantize, GptqBeatsRoundingOnCorrelatedInputs) {
  torch::manual_seed(3);
  auto w = torch::randn({48, 128});
  // Inputs with strongly correlated features, as hidden states have.
  auto basis = torch::randn({16, 128});
  auto x = torch::matmul(torch::randn({2048, 16}), basis) + 0.1 * torch::randn({2048, 128});
  auto h = torch::matmul(x.t(), x).to(torch::kDouble);
  const auto gptq = quantize_gptq(w, h);
  const auto rtn = quantize_rtn(w, QuantFormat::kQ4_0);
  const double e_gptq = output_error(w, gptq, h), e_rtn = output_error(w, rtn, h);
  EXPECT_LT(e_gptq, 0.5 * e_rtn) << "gptq " << e_gptq << " rtn " << e_rtn;
  // The error is what it claims: the squared output difference summed over the inputs.
  auto direct = (torch::matmul(x.to(torch::kDouble), (w - dequantize(gptq)).t().to(torch::kDouble))).pow(2).sum();
  EXPECT_NEAR(direct.item<double>(), e_gptq, 1e-6 * e_gptq);
  // Only valid Q4_0 blocks: dequantization reproduces a grid of 16 levels per block.
  EXPECT_EQ(gptq.q.sizes(), rtn.q.sizes());
}

TEST(Quantize, CheckpointTensorsRoundTripAndRejectBrokenParts) {
  torch::manual_seed(4);
  auto w8 = torch::randn({4, 32}), w4 = torch::randn({6, 64}), bias = torch::randn({4});
  NamedTensors tensors{{"layers.0.mixer.wo.bias", bias}};
  append_quantized(tensors, "layers.0.mixer.wo.weight", quantize_rtn(w8, QuantFormat::kInt8));
  append_quantized(tensors, "lm_head.weight", quantize_rtn(w4, QuantFormat::kQ4_0));
  TempDir dir;
  save_safetensors(dir / "q.safetensors", tensors);
  auto file = load_safetensors(dir / "q.safetensors");
  auto q = extract_quantized(file.tensors, "q.safetensors");
  ASSERT_EQ(q.size(), 2u);
  ASSERT_EQ(file.tensors.size(), 3u);
  EXPECT_EQ(file.tensors[0].first, "layers.0.mixer.wo.bias");
  EXPECT_EQ(file.tensors[1].first, "layers.0.mixer.wo.weight");
  EXPECT_EQ(file.tensors[2].first, "lm_head.weight");
  EXPECT_TRUE(torch::allclose(file.tensors[1].second, w8, 0, 0.02));
  EXPECT_TRUE(torch::equal(file.tensors[2].second, dequantize(quantize_rtn(w4, QuantFormat::kQ4_0))));
  EXPECT_EQ(q.at("lm_head.weight").cols, 64);

  NamedTensors orphan{{"x.q8", torch::zeros({2, 3}, torch::kChar)}};
  EXPECT_NE(error_message([&] { extract_quantized(orphan, "f"); }).find("has no 'x.scale'"), std::string::npos);
  NamedTensors bad{{"x.q4_0", torch::zeros({2, 17}, torch::kByte)}};
  EXPECT_NE(error_message([&] { extract_quantized(bad, "f"); }).find("q4_0 blocks"), std::string::npos);
}

// What a quantized checkpoint quantizes is declared by the blocks (kQuantizable): every attention
// and FFN projection and an untied lm_head; never embeddings, norms, biases, MoE routers or
// Mamba's projections; and only where the format fits the row length.
TEST(Quantize, QuantizableWeightsAreTheDeclaredOnes) {
  auto c = tiny_config("llama");
  c.layers = {"attention", "linear_attention"};
  Model model(c);
  std::set<std::string> quantizable;
  for (const auto& p : model->named_parameters())
    if (model->is_quantizable(p.key())) quantizable.insert(p.key());
  std::set<std::string> expected{"lm_head.weight"};
  for (int layer : {0, 1})
    for (const char* name : {"mixer.wqkv", "mixer.wo", "ffn.w_in", "ffn.w_out"})
      expected.insert("layers." + std::to_string(layer) + "." + name + ".weight");
  EXPECT_EQ(quantizable, expected);
  c.ffn = "moe", c.layers = {"mamba", "attention"}, c.tie_embeddings = true;
  Model other(c);
  for (const auto& p : other->named_parameters())
    EXPECT_EQ(other->is_quantizable(p.key()),
              p.key() == "layers.1.mixer.wqkv.weight" || p.key() == "layers.1.mixer.wo.weight")
        << p.key();
  EXPECT_TRUE(fits_format(torch::zeros({8, 64}), QuantFormat::kQ4_0));
  EXPECT_FALSE(fits_format(torch::zeros({64}), QuantFormat::kInt8));
  EXPECT_FALSE(fits_format(torch::zeros({8, 48}), QuantFormat::kQ4_0));
  EXPECT_TRUE(fits_format(torch::zeros({8, 48}), QuantFormat::kInt8));
}

namespace {

std::unique_ptr<Engine> f32_engine(Model& model, int64_t slots) {
  FastEngineOptions options;
  options.engine.slots = slots;
  options.weights = WeightFormat::kF32;
  return make_fast_engine(model, {}, options);
}

// An engine's logits for one row against the Model's logits at `position`.
void expect_row(const torch::Tensor& got, const torch::Tensor& ref, int64_t position, const char* what) {
  EXPECT_TRUE(torch::allclose(got, ref[position], 1e-4, 1e-4))
      << what << " at " << position << ": max diff " << (got - ref[position]).abs().max().item<float>();
}

}  // namespace

// The fast engine in fp32 computes the Model's forward: a prompt fed in pieces, several slots
// interleaved in one call, each slot's logits equal to the Model's over its whole sequence.
class FastEngineMatchesModel : public ::testing::TestWithParam<std::string> {};

TEST_P(FastEngineMatchesModel, PiecesAndSlots) {
  const auto config = tiny_config(GetParam());
  auto model = random_model(config);
  ASSERT_TRUE(fast_engine_supports(config));
  auto engine = f32_engine(model, 3);
  const auto a = random_tokens(30, config.vocab_size, 1), b = random_tokens(12, config.vocab_size, 2);
  const auto ref_a = model_logits(model, a), ref_b = model_logits(model, b);
  // Slot 2 takes a: 7 tokens, then 1 at a time, then the rest; slot 0 takes b alongside.
  auto out = engine->forward({2}, {{a.begin(), a.begin() + 7}});
  expect_row(out[0], ref_a, 6, "a");
  int64_t fed_a = 7, fed_b = 0;
  out = engine->forward({0, 2}, {{b.begin(), b.begin() + 5}, {a[7]}});
  expect_row(out[0], ref_b, 4, "b");
  expect_row(out[1], ref_a, 7, "a");
  fed_a = 8, fed_b = 5;
  while (fed_b < 12) {
    out = engine->forward({2, 0}, {{a[fed_a]}, {b[fed_b]}});
    expect_row(out[0], ref_a, fed_a, "a");
    expect_row(out[1], ref_b, fed_b, "b");
    ++fed_a, ++fed_b;
  }
  out = engine->forward({2}, {{a.begin() + fed_a, a.end()}});
  expect_row(out[0], ref_a, 29, "a");
  EXPECT_EQ(engine->length(2), 30);
  EXPECT_EQ(engine->length(0), 12);
  EXPECT_EQ(engine->length(1), 0);
  // A reset slot starts over.
  engine->reset(2);
  out = engine->forward({2}, {{b.begin(), b.begin() + 3}});
  expect_row(out[0], ref_b, 2, "b after reset");
}

// Long prompts go through attention in blocks of 64 rows (two GEMMs and a masked softmax each):
// two slots' prompts in one call, 150 and 70 rows (blocks of 64, 64, 22 and 64, 6, with a sliding
// window cutting into them in llama_window), then single steps, all equal to the Model's forward.
TEST_P(FastEngineMatchesModel, LongPromptsInBlocks) {
  auto config = tiny_config(GetParam());
  config.max_seq_len = 160;
  config.validate("test");
  auto model = random_model(config, 3);
  auto engine = f32_engine(model, 2);
  const auto a = random_tokens(153, config.vocab_size, 4), b = random_tokens(72, config.vocab_size, 5);
  const auto ref_a = model_logits(model, a), ref_b = model_logits(model, b);
  auto out = engine->forward({1, 0}, {{a.begin(), a.begin() + 150}, {b.begin(), b.begin() + 70}});
  expect_row(out[0], ref_a, 149, "a");
  expect_row(out[1], ref_b, 69, "b");
  for (int64_t i = 0; i < 2; ++i) {
    out = engine->forward({0, 1}, {{b[70 + i]}, {a[150 + i]}});
    expect_row(out[0], ref_b, 70 + i, "b");
    expect_row(out[1], ref_a, 150 + i, "a");
  }
  out = engine->forward({1}, {{a[152]}});
  expect_row(out[0], ref_a, 152, "a");
}

INSTANTIATE_TEST_SUITE_P(Architectures, FastEngineMatchesModel,
                         ::testing::Values("llama", "llama_adjacent", "llama_window", "gpt", "sinusoidal",
                                           "relu_nopos"));

TEST(FastEngine, QuantizedWeightsMatchTheDequantizedModel) {
  // The engine's int8 and Q4_0 kernels quantize activations to 8 bits; the Model holds the
  // dequantized weights in fp32. Their logits differ by the activation rounding only.
  const auto config = tiny_config("llama");
  for (auto format : {QuantFormat::kInt8, QuantFormat::kQ4_0}) {
    auto model = random_model(config, 5);
    std::map<std::string, QuantizedLinear> quantized;
    {
      torch::NoGradGuard no_grad;
      for (auto& p : model->named_parameters())
        if (model->is_quantizable(p.key()) && fits_format(p.value(), format)) {
          quantized[p.key()] = quantize_rtn(p.value(), format);
          p.value().copy_(dequantize(quantized[p.key()]));
        }
    }
    EXPECT_EQ(quantized.size(), 2u * 4 + 1);  // wqkv, wo, w_in, w_out per layer, lm_head
    FastEngineOptions options;
    auto engine = make_fast_engine(model, quantized, options);
    const auto tokens = random_tokens(20, config.vocab_size, 3);
    const auto ref = model_logits(model, tokens);
    auto out = engine->forward({0}, {{tokens.begin(), tokens.end() - 1}});
    out = engine->forward({0}, {{tokens.back()}});
    const float spread = ref[19].std().item<float>();
    const float diff = (out[0] - ref[19]).abs().max().item<float>();
    EXPECT_LT(diff, 0.05 * spread) << format_name(format) << ": " << diff << " vs logit std " << spread;
    // The engine's top token is the reference's top token, or one within the difference of it.
    const int64_t top = out[0].argmax().item<int64_t>();
    EXPECT_GE(ref[19][top].item<float>(), ref[19].max().item<float>() - 2 * diff) << format_name(format);
  }
}

TEST(FastEngine, RejectsBadCallsWithoutChangingState) {
  const auto config = tiny_config("gpt");
  auto model = random_model(config);
  FastEngineOptions options;
  options.engine.slots = 2;
  options.engine.context = 10;
  auto engine = make_fast_engine(model, {}, options);
  engine->forward({0}, {{1, 2, 3}});
  EXPECT_NE(error_message([&] {
              engine->forward({0}, {{1, 2, 3, 4, 5, 6, 7, 8}});
            }).find("context of 10"),
            std::string::npos);
  EXPECT_NE(error_message([&] { engine->forward({1}, {{97}}); }).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(error_message([&] { engine->forward({0, 0}, {{1}, {2}}); }).find("twice"), std::string::npos);
  EXPECT_NE(error_message([&] { engine->forward({2}, {{1}}); }).find("slot 2"), std::string::npos);
  EXPECT_NE(error_message([&] { engine->forward({1}, {{}}); }).find("no new tokens"), std::string::npos);
  EXPECT_EQ(engine->length(0), 3);
  EXPECT_EQ(engine->length(1), 0);
  auto c = tiny_config("gpt");
  c.norm_placement = "post";
  std::string why;
  EXPECT_FALSE(fast_engine_supports(c, &why));
  EXPECT_NE(why.find("norm_placement post"), std::string::npos);
  c = tiny_config("gpt");
  c.mixer = "mamba";
  EXPECT_FALSE(fast_engine_supports(c, &why));
}

TEST(FastEngine, GptqThroughTheEngineLowersEveryLayersError) {
  LoadedModel loaded;
  loaded.model = random_model(tiny_config("llama"), 6);
  loaded.dir = "test";
  torch::manual_seed(7);
  auto calibration = torch::randint(0, 97, {8, 32});
  std::vector<QuantizeStats> stats;
  auto weights = quantize_model(loaded, QuantMethod::kGptq, calibration, {}, &stats);
  ASSERT_EQ(stats.size(), 8u);  // the layers' linears; lm_head is rounded
  EXPECT_EQ(stats.front().name, "layers.0.mixer.wqkv.weight");
  EXPECT_EQ(stats.back().name, "layers.1.ffn.w_out.weight");
  double rtn = 0, gptq = 0;
  for (const auto& s : stats) {
    EXPECT_LT(s.gptq_error, s.rtn_error) << s.name;
    rtn += s.rtn_error, gptq += s.gptq_error;
  }
  EXPECT_LT(gptq, 0.8 * rtn);
  EXPECT_EQ(weights.size(), 9u);
  // The float model is left as it was.
  for (auto& p : loaded.model->named_parameters())
    if (weights.count(p.key())) {
      EXPECT_FALSE(torch::equal(p.value(), dequantize(weights.at(p.key())))) << p.key();
    }
}

TEST(QuantizeCli, QuantizeEvalAndRefuseToRequantize) {
  TinyRun run;
  const std::string recipe = (run.root / "recipe.yaml").string();
  { std::ofstream(recipe) << run.recipe_yaml(); }
  const std::string out = (run.root / "run").string();
  auto r = run_loom("--threads 1 train " + recipe + " --out " + out);
  ASSERT_EQ(r.status, 0) << r.output;
  auto base = run_loom("--threads 1 eval " + out);
  ASSERT_EQ(base.status, 0) << base.output;
  auto loss_of = [](const std::string& text) {
    const auto at = text.find("loss ");
    return at == std::string::npos ? -1.0 : std::stod(text.substr(at + 5));
  };
  for (const std::string method : {"int8", "q4", "gptq"}) {
    const std::string q = (run.root / ("q-" + method)).string();
    r = run_loom("--threads 1 quantize " + out + " --method " + method + " --out " + q + " --calib-sequences 4");
    ASSERT_EQ(r.status, 0) << r.output;
    auto loaded = load_checkpoint(q);
    EXPECT_EQ(loaded.quantization, method);
    // Every file of the float checkpoint but its weights and optimizer state comes along.
    for (const auto& entry : std::filesystem::directory_iterator(resolve_checkpoint(out))) {
      const auto name = entry.path().filename().string();
      EXPECT_EQ(std::filesystem::exists(std::filesystem::path(q) / name), name != "optimizer.safetensors") << name;
    }
    // d_model 32 and d_ff 64: every linear qualifies for both formats, and the tied embedding
    // (the output projection) is quantized too.
    EXPECT_EQ(loaded.quantized.size(), 4u * 2 + 1);
    EXPECT_EQ(loaded.quantized.count("tok_emb.weight"), 1u);
    auto e = run_loom("--threads 1 eval " + q);
    ASSERT_EQ(e.status, 0) << e.output;
    EXPECT_NE(e.output.find("quantized weights: " + method), std::string::npos) << e.output;
    const double delta = loss_of(e.output) - loss_of(base.output);
    EXPECT_LT(std::fabs(delta), method == "int8" ? 0.01 : 0.2) << method << "\n" << e.output << base.output;
    // generate runs the stored quantized weights on the fast engine.
    auto g = run_loom("--threads 1 generate " + q + " --prompt the --max-new-tokens 6 --temperature 0");
    EXPECT_EQ(g.status, 0) << g.output;
    EXPECT_EQ(g.output.rfind("the", 0), 0u) << g.output;
    if (method == "gptq")
      expect_one_line_error(run_loom("quantize " + q + " --method q4 --out " + q + "-again"), "already quantized");
  }
  // --out naming an existing directory (here the float checkpoint itself) is refused, and the
  // checkpoint keeps its float weights.
  const std::string float_ckpt = resolve_checkpoint(out);
  expect_one_line_error(run_loom("quantize " + float_ckpt + " --method int8 --out " + float_ckpt), "already exists");
  EXPECT_TRUE(load_checkpoint(float_ckpt).quantized.empty());
  expect_one_line_error(run_loom("average " + (run.root / "q-int8").string() + " " + (run.root / "q-q4").string() +
                                 " --out " + (run.root / "avg").string()),
                        "quantized checkpoint");
}

TEST(FastEngine, GenerateThroughTheEngineEqualsTheModelsGenerate) {
  const auto config = tiny_config("llama");
  auto model = random_model(config, 8);
  FastEngineOptions options;
  options.engine.slots = 2;
  auto engine = make_fast_engine(model, {}, options);
  GenerateOptions g;
  g.max_new_tokens = 25;
  g.sampling.temperature = 0;
  const auto prompt = random_tokens(6, config.vocab_size, 9);
  const auto reference = generate(model, prompt, g);
  EXPECT_EQ(generate(*engine, 1, prompt, g), reference);
  EXPECT_EQ(generate(*engine, 1, prompt, g), reference);  // the slot is reset first
  // Sampling with a seed: the same draws.
  g.sampling = {0.9, 20, 0.95, 42};
  EXPECT_EQ(generate(*engine, 0, prompt, g), generate(model, prompt, g));
  // The context bounds the budget: 40 positions, 6 taken by the prompt.
  g.max_new_tokens = 100;
  g.sampling.temperature = 0;
  EXPECT_EQ(generate(*engine, 0, prompt, g).size(), 34u);
}
