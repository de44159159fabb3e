// Translation decoding (infer/translate.h) on tiny encoder-decoders: greedy against a plain argmax
// loop, batched against one sentence at a time, cached against full recomputation, beam search
// against exhaustive search, scores against teacher forcing; n-gram bans, unk penalty, lengths,
// sampling, errors. Also the encoder-decoder itself: cross-attention against libtorch's
// MultiheadAttention, causality of the decoder, source padding that changes nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include "loom/infer/translate.h"
#include "loom/io/safetensors.h"
#include "loom/nn/mixer.h"
#include "test_util.h"

using namespace loom;

namespace {

constexpr int64_t kBos = 1, kEos = 2, kUnk = 0;

ModelConfig translation_config(int64_t vocab = 40, double init_std = 0.2) {
  ModelConfig c;
  c.arch = "encoder_decoder";
  c.vocab_size = vocab;
  c.d_model = 32;
  c.n_layers = 2;
  c.dec_layers = 2;
  c.n_heads = 2;
  c.d_ff = 64;
  c.max_seq_len = 48;
  c.init_std = init_std;  // larger than GPT-2's 0.02: a random model then has peaked, distinct choices
  c.validate("test");
  return c;
}

Model random_model(int64_t vocab = 40, double init_std = 0.2, uint64_t seed = 1) {
  torch::manual_seed(seed);
  Model model(translation_config(vocab, init_std));
  model->eval();
  return model;
}

// Random tokens that are neither bos nor eos.
std::vector<int64_t> random_tokens(std::mt19937& rng, int64_t length, int64_t vocab) {
  std::vector<int64_t> out;
  while (static_cast<int64_t>(out.size()) < length) {
    const int64_t id = static_cast<int64_t>(rng() % vocab);
    if (id != kBos && id != kEos) out.push_back(id);
  }
  return out;
}

std::vector<std::vector<int64_t>> random_sources(uint32_t seed, const std::vector<int64_t>& lengths, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int64_t>> out;
  for (int64_t length : lengths) out.push_back(random_tokens(rng, length, vocab));
  return out;
}

// Rows padded with `pad`: [N, max length].
torch::Tensor padded(const std::vector<std::vector<int64_t>>& rows, int64_t pad = -1) {
  size_t width = 1;
  for (const auto& row : rows) width = std::max(width, row.size());
  auto out = torch::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, pad, torch::kLong);
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < rows[i].size(); ++j) out[i][j] = rows[i][j];
  return out;
}

std::vector<int64_t> with_eos(std::vector<int64_t> tokens) {
  tokens.push_back(kEos);
  return tokens;
}

// The log-probs [T + 1, V] of the decoder reading bos + target, without any cache.
torch::Tensor teacher_forced_lprobs(Model& model, const std::vector<int64_t>& source,
                                    const std::vector<int64_t>& target) {
  torch::NoGradGuard no_grad;
  auto memory = model->encode(padded({with_eos(source)}));
  std::vector<int64_t> input{kBos};
  input.insert(input.end(), target.begin(), target.end());
  auto hidden = model->decode_hidden(padded({input}), memory, {});
  return torch::log_softmax(model->logits(hidden).to(torch::kFloat), -1)[0];
}

// Sum of the log-probs of target + eos, by teacher forcing.
double teacher_forced_score(Model& model, const std::vector<int64_t>& source, const std::vector<int64_t>& target) {
  auto lprobs = teacher_forced_lprobs(model, source, target);
  const auto labels = with_eos(target);
  double sum = 0;
  for (size_t i = 0; i < labels.size(); ++i) sum += lprobs[static_cast<int64_t>(i)][labels[i]].item<double>();
  return sum;
}

// Plain greedy decoding: the whole prefix recomputed each step, argmax, eos banned as the first
// token (fairseq's min_len 1), eos forced after max_len tokens.
std::vector<int64_t> greedy_reference(Model& model, const std::vector<int64_t>& source, int64_t max_len) {
  std::vector<int64_t> out;
  for (int64_t step = 0; step < max_len; ++step) {
    auto lprobs = teacher_forced_lprobs(model, source, out);
    auto last = lprobs[lprobs.size(0) - 1].clone();
    if (step == 0) last[kEos] = -std::numeric_limits<float>::infinity();
    const int64_t next = last.argmax().item<int64_t>();
    if (next == kEos) break;
    out.push_back(next);
  }
  return out;
}

SearchOptions search(int64_t beam, int64_t nbest = 1) {
  SearchOptions o;
  o.beam = beam;
  o.nbest = nbest;
  return o;
}

void expect_same_hypotheses(const std::vector<std::vector<Hypothesis>>& x,
                            const std::vector<std::vector<Hypothesis>>& y) {
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(x[i].size(), y[i].size()) << "source " << i;
    for (size_t j = 0; j < x[i].size(); ++j) {
      EXPECT_EQ(x[i][j].tokens, y[i][j].tokens) << "source " << i << " hypothesis " << j;
      EXPECT_NEAR(x[i][j].score, y[i][j].score, 1e-4) << "source " << i << " hypothesis " << j;
    }
  }
}

bool has_repeated_ngram(const std::vector<int64_t>& tokens, size_t n) {
  std::set<std::vector<int64_t>> seen;
  for (size_t i = 0; i + n <= tokens.size(); ++i)
    if (!seen.insert(std::vector<int64_t>(tokens.begin() + i, tokens.begin() + i + n)).second) return true;
  return false;
}

// A model trained a few hundred Adam steps to copy its source (tokens 0 and 3..V-1, unk
// included): non-degenerate outputs that end with eos at the right place. Trained once per build:
// CTest runs every test in its own process, so the weights are kept in the build directory for
// the other tests (delete build/test-cache after changing the model's forward pass).
Model& copy_model() {
  static Model model = [] {
    const auto cache =
        std::filesystem::path(LOOM_BINARY).parent_path() / "test-cache" / "translate-copy-model-v1.safetensors";
    torch::manual_seed(5);
    Model m(translation_config(24, 0.02));
    if (std::filesystem::exists(cache)) {
      try {
        load_module_state(*m, load_safetensors(cache.string()), cache.string());
        m->eval();
        return m;
      } catch (const loom::Error&) {  // stale (the model changed): train again
      }
    }
    m->train();
    torch::optim::Adam adam(m->parameters(), torch::optim::AdamOptions(3e-3));
    std::mt19937 rng(11);
    for (int step = 0; step < 500; ++step) {
      std::vector<std::vector<int64_t>> sources, inputs, labels;
      for (int i = 0; i < 32; ++i) {
        auto tokens = random_tokens(rng, 1 + static_cast<int64_t>(rng() % 8), 24);
        sources.push_back(with_eos(tokens));
        std::vector<int64_t> input{kBos};
        input.insert(input.end(), tokens.begin(), tokens.end());
        inputs.push_back(input);
        labels.push_back(with_eos(tokens));
      }
      auto memory = m->encode(padded(sources));
      auto hidden = m->decode_hidden(padded(inputs), memory, padded(sources).lt(0));
      auto logits = m->logits(hidden);
      auto loss =
          torch::nn::functional::cross_entropy(logits.view({-1, 24}), padded(labels).view({-1}),
                                               torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
      adam.zero_grad();
      loss.backward();
      adam.step();
    }
    m->eval();
    std::filesystem::create_directories(cache.parent_path());
    save_safetensors(cache.string(), module_state(*m));  // atomic: parallel tests never see half a file
    return m;
  }();
  return model;
}

}  // namespace

// --- The encoder-decoder model --------------------------------------------------------------

TEST(CrossAttention, MatchesLibtorchWithKeyPaddingAndCachesTheMemory) {
  torch::manual_seed(40);
  auto c = translation_config();
  auto cross = make_cross_attention(c);
  const int64_t d = c.d_model;
  torch::nn::MultiheadAttention reference(torch::nn::MultiheadAttentionOptions(d, c.n_heads));
  {
    torch::NoGradGuard no_grad;
    // libtorch's in_proj rows are [q; k; v]; loom's wq holds q, wkv holds [k; v].
    reference->in_proj_bias.copy_(torch::randn({3 * d}));
    reference->out_proj->bias.copy_(torch::randn({d}));
    param(*cross, "wq.weight").copy_(reference->in_proj_weight.narrow(0, 0, d));
    param(*cross, "wq.bias").copy_(reference->in_proj_bias.narrow(0, 0, d));
    param(*cross, "wkv.weight").copy_(reference->in_proj_weight.narrow(0, d, 2 * d));
    param(*cross, "wkv.bias").copy_(reference->in_proj_bias.narrow(0, d, 2 * d));
    param(*cross, "wo.weight").copy_(reference->out_proj->weight);
    param(*cross, "wo.bias").copy_(reference->out_proj->bias);
  }
  const int64_t b = 2, t = 5, s = 7;
  auto x = torch::randn({b, t, d});
  auto memory = torch::randn({b, s, d});
  auto padding = torch::zeros({b, s}, torch::kBool);
  padding[1].narrow(0, 4, 3).fill_(true);
  auto ours = cross->forward(x, MixerContext{nullptr, 0, nullptr, {}, memory, padding});
  auto theirs =
      std::get<0>(reference->forward(x.transpose(0, 1), memory.transpose(0, 1), memory.transpose(0, 1), padding))
          .transpose(0, 1);
  EXPECT_TRUE(torch::allclose(ours, theirs, 1e-5, 1e-5)) << (ours - theirs).abs().max().item<float>();
  // The padded keys matter not at all: changing that memory changes nothing.
  auto changed = memory.clone();
  changed[1].narrow(0, 4, 3).normal_();
  EXPECT_TRUE(
      torch::allclose(cross->forward(x, MixerContext{nullptr, 0, nullptr, {}, changed, padding}), ours, 1e-5, 1e-6));
  // With a cache the memory is projected on the first call and reused without it.
  MixerState cache;
  auto first = cross->forward(x.narrow(1, 0, 2), MixerContext{nullptr, 0, &cache, {}, memory, padding});
  ASSERT_EQ(cache.tensors.size(), 2u);  // keys and values of the memory
  EXPECT_EQ(cache.kinds[0], StateKind::kMemory);
  auto later = cross->forward(x.narrow(1, 2, 3), MixerContext{nullptr, 2, &cache, {}, {}, padding});
  EXPECT_TRUE(torch::allclose(torch::cat({first, later}, 1), theirs, 1e-5, 1e-5));
}

TEST(TranslateModel, DecoderIsCausal) {
  auto model = random_model();
  torch::NoGradGuard no_grad;
  auto memory = model->encode(padded({{5, 6, 7, kEos}, {8, 9, kEos}}));
  auto memory_padding = padded({{5, 6, 7, kEos}, {8, 9, kEos}}).lt(0);
  auto target = torch::randint(3, 40, {2, 8});
  auto changed = target.clone();
  changed.narrow(1, 5, 3).copy_((target.narrow(1, 5, 3) - 2).remainder(37) + 3);  // each token a different one
  ASSERT_FALSE(torch::equal(target, changed));
  auto h = model->decode_hidden(target, memory, memory_padding);
  auto h_changed = model->decode_hidden(changed, memory, memory_padding);
  EXPECT_TRUE(torch::allclose(h.narrow(1, 0, 5), h_changed.narrow(1, 0, 5), 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(h.narrow(1, 5, 1), h_changed.narrow(1, 5, 1), 1e-3, 1e-3));
}

TEST(TranslateModel, SourcePaddingChangesNothing) {
  auto model = random_model();
  torch::NoGradGuard no_grad;
  const std::vector<std::vector<int64_t>> sources{{5, 6, 7, 8, 9, 10, kEos}, {11, 12, kEos}, {13, 14, 15, kEos}};
  auto batch = padded(sources);
  auto memory = model->encode(batch);
  auto target = torch::randint(3, 40, {3, 6});
  auto h = model->decode_hidden(target, memory, batch.lt(0));
  for (size_t i = 0; i < sources.size(); ++i) {
    SCOPED_TRACE("source " + std::to_string(i));
    const auto len = static_cast<int64_t>(sources[i].size());
    auto alone = model->encode(padded({sources[i]}));
    EXPECT_TRUE(torch::allclose(memory[i].narrow(0, 0, len), alone[0], 1e-5, 1e-5));
    auto h_alone = model->decode_hidden(target.narrow(0, i, 1), alone, {});
    EXPECT_TRUE(torch::allclose(h[i], h_alone[0], 1e-5, 1e-5)) << (h[i] - h_alone[0]).abs().max().item<float>();
  }
}

// --- Decoding --------------------------------------------------------------------------------

TEST(Translate, GreedyIsArgmaxDecoding) {
  Model random = random_model();
  for (Model* model : {&random, &copy_model()}) {
    const int64_t vocab = (*model)->config().vocab_size;
    auto sources = random_sources(1, {3, 7, 0, 5, 1, 9}, vocab);
    auto options = search(1);
    options.max_len_a = 0;
    options.max_len_b = 12;
    auto result = translate_batch(*model, sources, options);
    ASSERT_EQ(result.size(), sources.size());
    int64_t ended_early = 0;
    for (size_t i = 0; i < sources.size(); ++i) {
      ASSERT_EQ(result[i].size(), 1u);
      const auto expected = greedy_reference(*model, sources[i], 12);
      EXPECT_EQ(result[i][0].tokens, expected) << "source " << i;
      ended_early += expected.size() < 12;
      EXPECT_NEAR(result[i][0].score, teacher_forced_score(*model, sources[i], expected) / (expected.size() + 1), 1e-4);
    }
    if (model == &copy_model()) {
      EXPECT_EQ(ended_early, 6);  // the trained model ends with eos
    }
  }
}

TEST(Translate, TrainedCopyModelCopiesWithEveryDecoder) {
  auto& model = copy_model();
  auto sources = random_sources(2, {1, 2, 3, 4, 5, 6, 7, 8, 3, 5}, 24);
  for (int64_t beam : {1, 4}) {
    auto result = translate_batch(model, sources, search(beam));
    int exact = 0;
    for (size_t i = 0; i < sources.size(); ++i) exact += result[i][0].tokens == sources[i];
    EXPECT_GE(exact, 9) << "beam " << beam;
  }
}

TEST(Translate, BatchedEqualsOneSentenceAtATime) {
  Model random = random_model();
  for (Model* model : {&random, &copy_model()}) {
    const int64_t vocab = (*model)->config().vocab_size;
    auto sources = random_sources(3, {6, 2, 0, 9, 4, 1, 7}, vocab);
    auto options = search(4, 3);
    options.max_len_b = 6;
    auto batched = translate_batch(*model, sources, options);
    std::vector<std::vector<Hypothesis>> alone;
    for (const auto& source : sources) alone.push_back(translate_batch(*model, {source}, options)[0]);
    expect_same_hypotheses(batched, alone);
  }
}

TEST(Translate, CachedEqualsFullRecomputation) {
  Model random = random_model();
  for (Model* model : {&random, &copy_model()}) {
    const int64_t vocab = (*model)->config().vocab_size;
    auto sources = random_sources(4, {5, 8, 2, 0, 6}, vocab);
    for (bool ngram : {false, true}) {
      auto options = search(4, 4);
      options.max_len_b = 5;
      options.no_repeat_ngram = ngram ? 2 : 0;
      auto cached = translate_batch(*model, sources, options);
      options.use_cache = false;
      auto full = translate_batch(*model, sources, options);
      expect_same_hypotheses(cached, full);
      for (const auto& hypotheses : cached) EXPECT_EQ(hypotheses.size(), 4u);
    }
  }
}

// With a beam as wide as every hypothesis there is, beam search is exhaustive: it returns every
// translation up to the maximum length, each scored as teacher forcing scores it.
TEST(Translate, WideBeamEqualsExhaustiveSearch) {
  auto model = random_model(/*vocab=*/4, /*init_std=*/0.5);
  const std::vector<int64_t> source{3, 0, 3};
  const std::vector<int64_t> symbols{0, 1, 3};  // every token but eos
  // Every translation of 1 to 3 tokens: 3 + 9 + 27 = 39.
  std::vector<std::vector<int64_t>> all{{}};
  std::vector<std::vector<int64_t>> translations;
  for (int length = 1; length <= 3; ++length) {
    std::vector<std::vector<int64_t>> longer;
    for (const auto& prefix : all)
      for (int64_t s : symbols) {
        auto t = prefix;
        t.push_back(s);
        longer.push_back(t);
      }
    all = longer;
    translations.insert(translations.end(), all.begin(), all.end());
  }
  ASSERT_EQ(translations.size(), 39u);
  std::map<std::vector<int64_t>, double> log_prob;
  for (const auto& t : translations) log_prob[t] = teacher_forced_score(model, source, t);
  for (double lenpen : {0.0, 1.0, 2.0}) {
    SCOPED_TRACE("lenpen " + std::to_string(lenpen));
    auto options = search(39, 39);
    options.lenpen = lenpen;
    options.max_len_a = 0;
    options.max_len_b = 3;
    auto result = translate_batch(model, {source}, options)[0];
    ASSERT_EQ(result.size(), 39u);
    std::set<std::vector<int64_t>> returned;
    for (size_t j = 0; j < result.size(); ++j) {
      const auto& h = result[j];
      returned.insert(h.tokens);
      ASSERT_TRUE(log_prob.count(h.tokens));
      EXPECT_NEAR(h.score, log_prob[h.tokens] / std::pow(h.tokens.size() + 1.0, lenpen), 1e-4);
      if (j > 0) {
        EXPECT_GE(result[j - 1].score, h.score);
      }
    }
    EXPECT_EQ(returned.size(), 39u);
    // The best is the exhaustive best.
    double best = -1e30;
    for (const auto& t : translations) best = std::max(best, log_prob[t] / std::pow(t.size() + 1.0, lenpen));
    EXPECT_NEAR(result[0].score, best, 1e-5);
  }
}

TEST(Translate, ScoresArePositionalLogProbsOverLengthToTheLenpen) {
  auto& model = copy_model();
  auto sources = random_sources(5, {4, 7, 2}, 24);
  for (double lenpen : {0.5, 1.0, 1.5}) {
    auto options = search(4, 4);
    options.lenpen = lenpen;
    auto result = translate_batch(model, sources, options);
    for (size_t i = 0; i < sources.size(); ++i) {
      for (const auto& h : result[i]) {
        ASSERT_EQ(h.positional_scores.size(), h.tokens.size() + 1);
        double sum = 0;
        for (float p : h.positional_scores) sum += p;
        const double length = std::pow(h.tokens.size() + 1.0, lenpen);
        EXPECT_NEAR(sum / length, h.score, 1e-4);
        EXPECT_NEAR(teacher_forced_score(model, sources[i], h.tokens) / length, h.score, 1e-4);
        auto lprobs = teacher_forced_lprobs(model, sources[i], h.tokens);
        EXPECT_NEAR(lprobs[0][h.tokens.empty() ? kEos : h.tokens[0]].item<float>(), h.positional_scores[0], 1e-4);
      }
    }
  }
}

TEST(Translate, NoRepeatNgramBansRepeats) {
  auto model = random_model(/*vocab=*/8, /*init_std=*/0.3);
  auto sources = random_sources(6, {4, 6, 3, 8}, 8);
  auto options = search(4, 4);
  options.max_len_a = 0;
  options.max_len_b = 20;
  auto repeats = [&](const std::vector<std::vector<Hypothesis>>& result, size_t n) {
    int count = 0;
    for (const auto& hypotheses : result)
      for (const auto& h : hypotheses) count += has_repeated_ngram(h.tokens, n);
    return count;
  };
  ASSERT_GT(repeats(translate_batch(model, sources, options), 2), 0);  // without the ban, repeats happen
  for (int64_t n : {1, 2, 3}) {
    options.no_repeat_ngram = n;
    auto result = translate_batch(model, sources, options);
    EXPECT_EQ(repeats(result, static_cast<size_t>(n)), 0) << "n " << n;
    for (const auto& hypotheses : result) EXPECT_EQ(hypotheses.size(), 4u);
  }
}

TEST(Translate, UnkPenaltyRemovesUnk) {
  auto& model = copy_model();
  std::vector<std::vector<int64_t>> sources{{kUnk, 5, 6}, {7, kUnk, kUnk, 8}, {kUnk}};
  auto count_unk = [](const std::vector<std::vector<Hypothesis>>& result) {
    int count = 0;
    for (const auto& hypotheses : result)
      for (const auto& h : hypotheses) count += static_cast<int>(std::count(h.tokens.begin(), h.tokens.end(), kUnk));
    return count;
  };
  auto options = search(4, 2);
  ASSERT_GT(count_unk(translate_batch(model, sources, options)), 0);  // the copy model copies unk
  options.unkpen = 1e6;
  auto penalized = translate_batch(model, sources, options);
  EXPECT_EQ(count_unk(penalized), 0);
  for (const auto& hypotheses : penalized) ASSERT_EQ(hypotheses.size(), 2u);
}

TEST(Translate, NbestIsOrderedAndLengthsAreBounded) {
  auto model = random_model();
  auto sources = random_sources(7, {2, 5, 10, 0, 60}, 40);  // 60 tokens: truncated to the context
  auto options = search(5, 5);
  options.max_len_a = 0.5;
  options.max_len_b = 2;
  auto result = translate_batch(model, sources, options);
  ASSERT_EQ(result.size(), sources.size());
  bool reached = false;
  for (size_t i = 0; i < sources.size(); ++i) {
    ASSERT_EQ(result[i].size(), 5u);
    const int64_t source_len = std::min<int64_t>(static_cast<int64_t>(sources[i].size()), 47);
    const auto max_len = static_cast<size_t>(std::floor(0.5 * source_len) + 2);
    for (size_t j = 0; j < result[i].size(); ++j) {
      EXPECT_LE(result[i][j].tokens.size(), max_len);
      EXPECT_GE(result[i][j].tokens.size(), 1u);  // eos is never the first token
      reached |= result[i][j].tokens.size() == max_len;
      if (j > 0) {
        EXPECT_GE(result[i][j - 1].score, result[i][j].score);
      }
    }
  }
  EXPECT_TRUE(reached);  // the random model seldom ends early: the limit is what stops it
  // The context caps the length: bos + 47 tokens fill the 48 positions.
  options = search(1);
  options.max_len_b = 1000;
  auto capped = translate_batch(model, {sources[4]}, options)[0][0];
  EXPECT_LE(capped.tokens.size(), 47u);
}

TEST(Translate, SamplingDrawsFromTheSampler) {
  auto model = random_model();
  auto sources = random_sources(8, {3, 6, 4}, 40);
  auto options = search(1);
  options.max_len_a = 0;
  options.max_len_b = 10;
  auto greedy = translate_batch(model, sources, options);
  options.sampling = true;
  options.sample.temperature = 0;  // the Sampler's greedy
  expect_same_hypotheses(translate_batch(model, sources, options), greedy);
  options.sample.temperature = 1.0;
  options.sample.top_k = 1;  // one candidate: greedy again
  expect_same_hypotheses(translate_batch(model, sources, options), greedy);
  options.sample.top_k = 0;
  options.sample.temperature = 2.0;
  options.sample.seed = 3;
  auto drawn = translate_batch(model, sources, options);
  expect_same_hypotheses(translate_batch(model, sources, options), drawn);  // seeded: reproducible
  bool differs = false;
  for (size_t i = 0; i < sources.size(); ++i) {
    differs |= drawn[i][0].tokens != greedy[i][0].tokens;
    EXPECT_NEAR(drawn[i][0].score,
                teacher_forced_score(model, sources[i], drawn[i][0].tokens) / (drawn[i][0].tokens.size() + 1), 1e-4);
  }
  EXPECT_TRUE(differs);
}

TEST(Translate, ErrorsAndEdgeCases) {
  auto model = random_model();
  EXPECT_NE(error_message([&] { translate_batch(model, {{3}}, search(2, 3)); }).find("nbest"), std::string::npos);
  EXPECT_NE(error_message([&] { translate_batch(model, {{3}}, search(0)); }).find("beam"), std::string::npos);
  auto sampling = search(2);
  sampling.sampling = true;
  EXPECT_NE(error_message([&] { translate_batch(model, {{3}}, sampling); }).find("beam 1"), std::string::npos);
  EXPECT_NE(error_message([&] {
              translate_batch(model, {{3, 40}}, search(1));
            }).find("outside the vocabulary"),
            std::string::npos);
  ModelConfig lm;
  lm.vocab_size = 40, lm.d_model = 16, lm.n_layers = 1, lm.n_heads = 2, lm.d_ff = 32, lm.max_seq_len = 16;
  Model decoder(lm);
  EXPECT_NE(error_message([&] { translate_batch(decoder, {{3}}, search(1)); }).find("encoder_decoder"),
            std::string::npos);
  // No sources, an empty source; the training mode survives.
  EXPECT_TRUE(translate_batch(model, {}, search(4)).empty());
  model->train();
  auto result = translate_batch(model, {{}}, search(4, 2));
  EXPECT_TRUE(model->is_training());
  ASSERT_EQ(result.size(), 1u);
  EXPECT_EQ(result[0].size(), 2u);
}
