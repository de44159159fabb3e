// Translation training pieces: label-smoothed loss, inverse_sqrt, length batches, collation, the
// encoder-decoder recipe checks, and a tiny end-to-end translation run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "loom/checkpoint/checkpoint.h"
#include "loom/checkpoint/recipe.h"
#include "loom/data/translation_data.h"
#include "loom/train/adamw.h"
#include "loom/train/linear_cross_entropy.h"
#include "loom/train/train_step.h"
#include "test_util.h"

using namespace loom;

namespace {

// fairseq's label_smoothed_nll_loss, written plainly with autograd.
torch::Tensor smoothed_reference(const torch::Tensor& hidden, const torch::Tensor& weight, const torch::Tensor& targets,
                                 double eps) {
  auto lprobs = torch::log_softmax(torch::nn::functional::linear(hidden, weight), -1);
  auto nll = -lprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1);
  auto smooth = -lprobs.sum(-1);
  const double eps_i = eps / static_cast<double>(weight.size(0) - 1);
  return ((1.0 - eps - eps_i) * nll + eps_i * smooth).mean();
}

}  // namespace

TEST(LabelSmoothing, MatchesFairseqFormulaAndGradients) {
  torch::manual_seed(5);
  auto hidden = torch::randn({300, 16}, torch::requires_grad());
  auto weight = torch::randn({50, 16}, torch::requires_grad());
  auto targets = torch::randint(50, {300});
  for (double z : {0.0, 1e-3}) {
    LossStats stats;
    auto loss = linear_cross_entropy(hidden, weight, targets, torch::kFloat, z, &stats, 0.1);
    loss.backward();
    auto gh = hidden.grad().clone(), gw = weight.grad().clone();
    hidden.mutable_grad() = torch::Tensor();
    weight.mutable_grad() = torch::Tensor();
    auto logits = torch::nn::functional::linear(hidden, weight);
    auto expected = smoothed_reference(hidden, weight, targets, 0.1) + z * torch::logsumexp(logits, -1).pow(2).mean();
    expected.backward();
    EXPECT_NEAR(loss.item<double>(), expected.item<double>(), 1e-5 * expected.item<double>());
    EXPECT_TRUE(torch::allclose(gh, hidden.grad(), 1e-4, 1e-6));
    EXPECT_TRUE(torch::allclose(gw, weight.grad(), 1e-4, 1e-6));
    hidden.mutable_grad() = torch::Tensor();
    weight.mutable_grad() = torch::Tensor();
    // The reported cross-entropy stays the plain nll, which the smoothed loss exceeds here.
    torch::NoGradGuard no_grad;
    auto nll = torch::nn::functional::cross_entropy(torch::nn::functional::linear(hidden, weight), targets);
    EXPECT_NEAR(stats.cross_entropy, nll.item<double>(), 1e-4);
    EXPECT_GT(loss.item<double>(), stats.cross_entropy);
  }
}

TEST(Schedule, InverseSqrt) {
  EXPECT_NEAR(inverse_sqrt_lr(0, 4, 1.0), 0.25, 1e-12);     // warm-up: 1/4 at the first update
  EXPECT_NEAR(inverse_sqrt_lr(3, 4, 1.0), 1.0, 1e-12);      // the peak at update 4
  EXPECT_NEAR(inverse_sqrt_lr(15, 4, 1.0), 0.5, 1e-12);     // sqrt(4 / 16)
  EXPECT_NEAR(inverse_sqrt_lr(399, 4, 2e-3), 2e-4, 1e-12);  // sqrt(4 / 400) = 0.1
}

TEST(LengthBatches, BudgetPaddingCountedEveryPairOnce) {
  std::mt19937 rng(3);
  std::vector<TranslationPair> pairs(500);
  for (auto& p : pairs) {
    p.src.assign(1 + rng() % 40, 7);
    p.tgt.assign(1 + rng() % 50, 8);
  }
  pairs[17].src.assign(300, 7);  // alone over the budget: a batch of its own
  const auto batches = length_batches(pairs, 256, 0);
  std::multiset<int64_t> seen;
  for (const auto& batch : batches) {
    size_t longest = 0;
    for (int64_t i : batch) {
      seen.insert(i);
      longest = std::max({longest, pairs[i].src.size() + 1, pairs[i].tgt.size() + 1});
    }
    if (batch.size() > 1) EXPECT_LE(batch.size() * longest, 256u);
    else EXPECT_TRUE(batch[0] == 17 || longest <= 256);
  }
  EXPECT_EQ(seen.size(), pairs.size());
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), pairs.size());
  // Sorted by length, batches hold similar lengths: padding is a small share of the budget.
  int64_t real = 0, padded = 0;
  for (const auto& batch : batches) {
    size_t longest = 0;
    for (int64_t i : batch) longest = std::max(longest, pairs[i].src.size() + 1);
    for (int64_t i : batch)
      real += static_cast<int64_t>(pairs[i].src.size()) + 1, padded += static_cast<int64_t>(longest);
  }
  EXPECT_GT(static_cast<double>(real) / static_cast<double>(padded), 0.9);
  // A sentence cap alone.
  for (const auto& batch : length_batches(pairs, 0, 32)) EXPECT_LE(batch.size(), 32u);
}

TEST(LengthBatches, CollateLayout) {
  std::vector<TranslationPair> pairs(2);
  pairs[0].src = {5, 6, 7};
  pairs[0].tgt = {9};
  pairs[1].src = {5};
  pairs[1].tgt = {10, 11, 12};
  const auto b = collate_pairs(pairs, {0, 1}, /*bos=*/1, /*eos=*/2);
  EXPECT_TRUE(torch::equal(b.source, torch::tensor({5, 6, 7, 2, 5, 2, -1, -1}).view({2, 4})));
  EXPECT_TRUE(torch::equal(b.inputs, torch::tensor({1, 9, -1, -1, 1, 10, 11, 12}).view({2, 4})));
  EXPECT_TRUE(torch::equal(b.targets, torch::tensor({9, 2, -1, -1, 10, 11, 12, 2}).view({2, 4})));
}

TEST(Seq2SeqRecipe, ArchAndTaskMustAgree) {
  const std::string model = "model: {arch: encoder_decoder, vocab_size: 100, d_model: 32, n_heads: 4, d_ff: 64}\n";
  EXPECT_NE(error_message([&] {
              parse_recipe("format: 1\n" + model, "r.yaml").validate("r.yaml");
            }).find("set task.name: translation"),
            std::string::npos);
  EXPECT_NE(error_message([] {
              parse_recipe("format: 1\ntask: {name: translation}\n", "r.yaml").validate("r.yaml");
            }).find("set model.arch: encoder_decoder"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              parse_recipe("format: 1\n" + model + "task: {name: translation, src: en, tgt: en}\n", "r.yaml")
                  .validate("r.yaml");
            }).find("both 'en'"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              parse_recipe("format: 1\nmodel: {arch: encoder_decoder, mixer: mamba}\ntask: {name: translation}\n",
                           "r.yaml")
                  .validate("r.yaml");
            }).find("no bidirectional form"),
            std::string::npos);
  EXPECT_NE(error_message([] {
              parse_recipe("format: 1\nmodel: {dec_layers: 2}\n", "r.yaml").validate("r.yaml");
            }).find("dec_layers applies to model.arch encoder_decoder"),
            std::string::npos);
  EXPECT_NE(
      error_message([&] {
        parse_recipe("format: 1\n" + model + "task: {name: translation, seq_len: 9}\n", "r.yaml").validate("r.yaml");
      }).find("task.seq_len does not apply"),
      std::string::npos);
  EXPECT_EQ(error_message([&] {
              parse_recipe("format: 1\n" + model + "task: {name: translation, src: de, tgt: en}\n", "r.yaml")
                  .validate("r.yaml");
            }),
            "no error");
}

TEST(Seq2SeqModel, ParameterLayoutAndSharing) {
  ModelConfig c;
  c.arch = "encoder_decoder";
  c.vocab_size = 50;
  c.d_model = 16;
  c.n_heads = 2;
  c.d_ff = 32;
  c.n_layers = 2;
  c.dec_layers = 3;
  c.validate("test");
  Model shared(c);
  EXPECT_EQ(shared->enc_layers->size(), 2u);
  EXPECT_EQ(shared->layers->size(), 3u);
  EXPECT_FALSE(shared->src_emb);
  for (const char* name : {"layers.0.cross.wq.weight", "layers.2.cross.wkv.weight", "layers.1.norm_cross.weight",
                           "enc_layers.1.mixer.wqkv.weight", "norm_enc.weight"})
    EXPECT_TRUE(param(*shared, name).defined()) << name;
  // Residual projections start at init_std / sqrt(2 x the depth of their own stack).
  auto residual_std = [&](const std::string& prefix) {
    std::vector<torch::Tensor> ws;
    for (auto& item : shared->named_parameters())
      if (item.key().rfind(prefix, 0) == 0 && item.key().size() > 10 &&
          item.key().compare(item.key().size() - 9, 9, "wo.weight") == 0)
        ws.push_back(item.value().flatten());
    return torch::cat(ws).std().item<double>();
  };
  EXPECT_NEAR(residual_std("enc_layers."), c.init_std / std::sqrt(4.0), 0.1 * c.init_std / std::sqrt(4.0));
  EXPECT_NEAR(residual_std("layers."), c.init_std / std::sqrt(6.0), 0.1 * c.init_std / std::sqrt(6.0));
  c.share_embeddings = false;
  Model separate(c);
  EXPECT_EQ(separate->num_parameters(), shared->num_parameters() + 50 * 16);
  // An encoder-decoder has no decoder-only forward.
  EXPECT_NE(error_message([&] {
              shared->hidden(torch::zeros({1, 3}, torch::kLong));
            }).find("encode and decode_hidden"),
            std::string::npos);
  // Label smoothing and the source reach the loss: a step with a source gives finite gradients to
  // the encoder.
  Batch batch{torch::tensor({1, 5, 6, 1, 7, -1}).view({2, 3}), torch::tensor({5, 6, 2, 7, 2, -1}).view({2, 3}),
              torch::tensor({9, 9, 2, 8, 2, -1}).view({2, 3})};
  auto loss = batch_loss(shared, batch, /*bf16=*/false, 0.0, nullptr, 0.1);
  loss.backward();
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  EXPECT_GT(param(*shared, "enc_layers.0.mixer.wqkv.weight").grad().abs().sum().item<double>(), 0);
}

// End to end on a corpus of the user's own (a toy language that reverses English word order):
// train, average, evaluate (loss, BLEU, chrF) and translate from the command line.
TEST(Seq2SeqCli, TrainAverageEvalTranslate) {
  const TempDir temp;
  const std::filesystem::path& root = temp.path;
  const auto corpus = root / "data" / "toy";
  std::filesystem::create_directories(corpus);
  std::mt19937 rng(11);
  const std::vector<std::string> words{"red", "cat", "sat", "on", "a", "mat", "big", "dog", "ran", "to", "the", "hall"};
  for (const auto& [split, n] : {std::pair{"train", 300}, std::pair{"valid", 20}, std::pair{"test", 20}}) {
    std::ofstream en(corpus / (std::string(split) + ".en")), de(corpus / (std::string(split) + ".de"));
    for (int i = 0; i < n; ++i) {
      std::vector<std::string> sentence(3 + rng() % 4);
      for (auto& w : sentence) w = words[rng() % words.size()];
      for (size_t k = 0; k < sentence.size(); ++k) en << (k ? " " : "") << sentence[k];
      for (size_t k = sentence.size(); k-- > 0;) de << sentence[k] << (k ? " " : "");
      en << "\n";
      de << "\n";
    }
  }
  std::ofstream(root / "recipe.yaml")
      << "format: 1\n"
         "model: {arch: encoder_decoder, vocab_size: 280, d_model: 32, n_layers: 1, dec_layers: 1, n_heads: 2, d_ff: "
         "64,\n"
         "        max_seq_len: 32, position: sinusoidal, embed_scale: true}\n"
         "task: {name: translation, src: en, tgt: de}\n"
         "data: {corpus: toy, dir: " +
             (root / "data").string() +
             "}\n"
             "train: {steps: 6, max_tokens: 256, schedule: inverse_sqrt, warmup_steps: 2, label_smoothing: 0.1, lr: "
             "0.003,\n"
             "        eval_every: 3, save_every: 2, keep_last: 3, log_every: 2, precision: fp32}\n";
  const std::string run = (root / "run").string();
  auto r = run_loom("--threads 1 train " + (root / "recipe.yaml").string() + " --out " + run);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("nats/target token"), std::string::npos) << r.output;
  r = run_loom("average " + run + " --last 3 --out " + run + "/averaged");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("averaged 3 checkpoints"), std::string::npos) << r.output;
  // The mean of the three checkpoints' weights, tensor by tensor.
  {
    auto averaged = load_checkpoint(run + "/averaged");
    std::vector<LoadedModel> parts;
    for (const char* step : {"step-000002", "step-000004", "step-000006"})
      parts.push_back(load_checkpoint(run + "/" + step));
    for (auto& item : averaged.model->named_parameters()) {
      auto mean = (param(*parts[0].model, item.key()) + param(*parts[1].model, item.key()) +
                   param(*parts[2].model, item.key())) /
                  3;
      EXPECT_TRUE(torch::allclose(item.value(), mean, 1e-5, 1e-6)) << item.key();
    }
  }
  r = run_loom("--threads 1 eval " + run + "/averaged --beam 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("test split: 20 pairs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("BLEU = "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("chrF2 = "), std::string::npos) << r.output;
  r = run_loom("--threads 1 translate " + run + " < " + (corpus / "test.en").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 20) << r.output;
  // Any bytes in, one line out per line in: emoji, CJK, a lone continuation byte, a line far over
  // the context (truncated with a warning on stderr), blank lines.
  std::ofstream(root / "odd.txt") << "red cat \xF0\x9F\x90\x88 \xE7\x8C\xAB\n\n\x80\xFF bad bytes\n"
                                  << std::string(2000, 'a') << "\n   \nhall\n";
  const std::string out_path = (root / "odd.out").string(), err_path = (root / "odd.err").string();
  ASSERT_EQ(std::system((std::string(LOOM_BINARY) + " --threads 1 translate " + run + " < " +
                         (root / "odd.txt").string() + " > " + out_path + " 2> " + err_path)
                            .c_str()),
            0);
  std::vector<std::string> lines;
  std::ifstream out(out_path);
  for (std::string line; std::getline(out, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_TRUE(lines[1].empty() && lines[4].empty());
  EXPECT_FALSE(lines[0].empty() || lines[3].empty() || lines[5].empty());
  std::stringstream err;
  err << std::ifstream(err_path).rdbuf();
  EXPECT_NE(err.str().find("line 4: "), std::string::npos) << err.str();
  EXPECT_NE(err.str().find("exceed the model's context"), std::string::npos) << err.str();
  // Bad input: averaging checkpoints of different models, too few checkpoints.
  expect_one_line_error(run_loom("average " + run + " --last 9 --out " + run + "/x"), "fewer than --last 9");
}
