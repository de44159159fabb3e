// The reference inference engine: slots fed in pieces, interleaved and reset give the logits of
// the Model's own forward over each whole sequence.
#include <gtest/gtest.h>

#include "loom/infer/engine.h"
#include "loom/infer/fast_engine.h"
#include "test_util.h"

using namespace loom;

namespace {

ModelConfig engine_config(std::vector<std::string> layers) {
  ModelConfig c;
  c.vocab_size = 40;
  c.d_model = 16;
  c.n_layers = static_cast<int64_t>(layers.size());
  c.n_heads = 2;
  c.d_ff = 32;
  c.max_seq_len = 20;
  c.mamba.d_state = 4;
  c.position = "rope";
  c.layers = std::move(layers);
  c.validate("test");
  return c;
}

// The Model's logits after the last token of `tokens`, computed over the whole sequence at once.
torch::Tensor full_logits(Model& model, const std::vector<int64_t>& tokens) {
  torch::NoGradGuard no_grad;
  auto logits = model->forward(torch::tensor(tokens).unsqueeze(0));  // [1, T, V]
  return logits[0][logits.size(1) - 1];
}

EngineOptions options(int64_t slots, int64_t context) {
  EngineOptions o;
  o.slots = slots;
  o.context = context;
  return o;
}

std::vector<int64_t> slice(const std::vector<int64_t>& v, size_t from, size_t to) {
  return {v.begin() + static_cast<long>(from), v.begin() + static_cast<long>(to)};
}

}  // namespace

// Attention-only and a Mamba hybrid (whose recurrent state reset() must clear).
class EngineTest : public testing::TestWithParam<std::vector<std::string>> {};

TEST_P(EngineTest, PiecesEqualTheWholeSequence) {
  torch::manual_seed(3);
  Model model(engine_config(GetParam()));
  model->eval();
  auto engine = make_reference_engine(model, options(1, 0));
  EXPECT_EQ(engine->context(), 20);
  EXPECT_EQ(engine->vocab_size(), 40);
  const std::vector<int64_t> seq{5, 9, 1, 33, 7, 2, 18, 30, 4, 11, 6};
  size_t at = 0;
  for (size_t piece : {4u, 1u, 3u, 1u, 2u}) {
    auto logits = engine->forward({0}, {slice(seq, at, at + piece)});
    at += piece;
    ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{1, 40}));
    EXPECT_TRUE(torch::allclose(logits[0], full_logits(model, slice(seq, 0, at)), 1e-4, 1e-5)) << "after " << at;
    EXPECT_EQ(engine->length(0), static_cast<int64_t>(at));
  }
  // A reset slot starts a new sequence from nothing.
  engine->reset(0);
  EXPECT_EQ(engine->length(0), 0);
  auto logits = engine->forward({0}, {{seq[3], seq[4]}});
  EXPECT_TRUE(torch::allclose(logits[0], full_logits(model, {seq[3], seq[4]}), 1e-4, 1e-5));
}

TEST_P(EngineTest, InterleavedSlotsEqualEachAlone) {
  torch::manual_seed(4);
  Model model(engine_config(GetParam()));
  model->eval();
  auto engine = make_reference_engine(model, options(3, 16));
  const std::vector<std::vector<int64_t>> seqs{{1, 2, 3, 4, 5, 6, 7}, {39, 38, 37}, {10, 20, 30, 10, 20}};
  // Step 1: slot 2 gets a whole prompt, slot 0 a first piece; slot 1 waits.
  auto l1 = engine->forward({2, 0}, {seqs[2], slice(seqs[0], 0, 3)});
  EXPECT_TRUE(torch::allclose(l1[0], full_logits(model, seqs[2]), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(l1[1], full_logits(model, slice(seqs[0], 0, 3)), 1e-4, 1e-5));
  // Step 2: all three, in another order, prefill and single tokens mixed.
  auto l2 = engine->forward({0, 1}, {slice(seqs[0], 3, 4), seqs[1]});
  EXPECT_TRUE(torch::allclose(l2[0], full_logits(model, slice(seqs[0], 0, 4)), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(l2[1], full_logits(model, seqs[1]), 1e-4, 1e-5));
  auto l3 = engine->forward({1, 0, 2}, {{8}, slice(seqs[0], 4, 7), {9}});
  auto with = [](std::vector<int64_t> v, int64_t t) {
    v.push_back(t);
    return v;
  };
  EXPECT_TRUE(torch::allclose(l3[0], full_logits(model, with(seqs[1], 8)), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(l3[1], full_logits(model, seqs[0]), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(l3[2], full_logits(model, with(seqs[2], 9)), 1e-4, 1e-5));
  // Resetting one slot leaves the others as they were.
  engine->reset(1);
  auto l4 = engine->forward({2, 1}, {{3}, {12, 13}});
  EXPECT_TRUE(torch::allclose(l4[0], full_logits(model, with(with(seqs[2], 9), 3)), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(l4[1], full_logits(model, {12, 13}), 1e-4, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Layers, EngineTest,
                         testing::Values(std::vector<std::string>{"attention", "attention"},
                                         std::vector<std::string>{"mamba", "attention"}));

TEST(Engine, BadInputsAreErrorsAndChangeNothing) {
  torch::manual_seed(5);
  Model model(engine_config({"attention"}));
  auto engine = make_reference_engine(model, options(2, 8));
  engine->forward({0}, {{1, 2, 3}});
  auto has = [](const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; };
  std::string e = error_message([&] { engine->forward({1, 0}, {{4}, {40}}); });
  EXPECT_TRUE(has(e, "token id 40")) << e;
  e = error_message([&] { engine->forward({1, 0}, {{4}, {-1}}); });
  EXPECT_TRUE(has(e, "token id -1")) << e;
  e = error_message([&] { engine->forward({0, 1}, {{1, 2, 3, 4, 5, 6}, {1}}); });
  EXPECT_TRUE(has(e, "context is 8")) << e;
  e = error_message([&] { engine->forward({1, 1}, {{1}, {2}}); });
  EXPECT_TRUE(has(e, "twice")) << e;
  e = error_message([&] { engine->forward({2}, {{1}}); });
  EXPECT_TRUE(has(e, "slot 2")) << e;
  e = error_message([&] { engine->forward({1}, {{}}); });
  EXPECT_TRUE(has(e, "no tokens")) << e;
  e = error_message([&] { engine->forward({0, 1}, {{1}}); });
  EXPECT_TRUE(has(e, "token lists")) << e;
  // Nothing moved: slot 1 is empty, slot 0 still holds 3 tokens and continues exactly.
  EXPECT_EQ(engine->length(0), 3);
  EXPECT_EQ(engine->length(1), 0);
  auto logits = engine->forward({0}, {{4, 5, 6, 7, 8}});
  EXPECT_TRUE(torch::allclose(logits[0], full_logits(model, {1, 2, 3, 4, 5, 6, 7, 8}), 1e-4, 1e-5));

  EXPECT_THROW(make_reference_engine(model, options(0, 0)), loom::Error);
  EXPECT_THROW(make_reference_engine(model, options(1, 21)), loom::Error);
  auto encoder = engine_config({"attention"});
  encoder.arch = "encoder";
  encoder.n_classes = 3;
  Model classifier(encoder);
  e = error_message([&] { make_reference_engine(classifier, EngineOptions{}); });
  EXPECT_TRUE(has(e, "model.arch encoder")) << e;
}

// Both engines' caches grow with what a slot holds (an idle engine holds none; a short sequence
// does not reserve the whole context) and reset frees them; a sequence that grows its cache
// several times still gives the Model's own logits.
TEST(Engine, CachesGrowWithTheSequenceAndResetFreesThem) {
  torch::manual_seed(6);
  ModelConfig c;
  c.vocab_size = 40, c.d_model = 16, c.n_layers = 2, c.n_heads = 2, c.d_ff = 32, c.max_seq_len = 400;
  c.validate("test");
  Model model(c);
  model->eval();
  FastEngineOptions fast;
  fast.engine = options(4, 0);
  std::vector<std::unique_ptr<Engine>> engines;
  engines.push_back(make_reference_engine(model, options(4, 0)));
  engines.push_back(make_fast_engine(model, {}, fast));
  const int64_t per_position = c.n_layers * 2 * c.d_model * static_cast<int64_t>(sizeof(float));
  std::vector<int64_t> seq(400);
  for (size_t i = 0; i < seq.size(); ++i) seq[i] = static_cast<int64_t>((i * 7 + 3) % 40);
  for (auto& engine : engines) {
    SCOPED_TRACE(engine->name());
    EXPECT_EQ(engine->cache_bytes(), 0);
    engine->forward({2}, {{1, 2, 3}});
    size_t at = 0;
    // Capacity: 128 positions, then 256, then 512 clamped to the context of 400.
    for (const auto& [piece, capacity] :
         std::vector<std::pair<size_t, int64_t>>{{10, 128}, {1, 128}, {119, 256}, {170, 400}, {100, 400}}) {
      auto logits = engine->forward({0}, {slice(seq, at, at + piece)});
      at += piece;
      EXPECT_TRUE(torch::allclose(logits[0], full_logits(model, slice(seq, 0, at)), 1e-4, 1e-5)) << "after " << at;
      EXPECT_EQ(engine->cache_bytes(), (capacity + 128) * per_position) << "after " << at;
    }
    EXPECT_THROW(engine->forward({0}, {{1}}), Error);  // the context is full
    engine->reset(0);
    EXPECT_EQ(engine->cache_bytes(), 128 * per_position);  // slot 2's
    auto logits = engine->forward({2}, {{4}});
    EXPECT_TRUE(torch::allclose(logits[0], full_logits(model, {1, 2, 3, 4}), 1e-4, 1e-5));
    engine->reset(2);
    EXPECT_EQ(engine->cache_bytes(), 0);
  }
}
