// The workbench tasks: every generated example checked against its task's definition by an
// independent reading (addition re-parsed from text, ListOps re-evaluated by a stack machine),
// splits deterministic and disjoint, recipe errors, and end-to-end training that learns.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "loom/checkpoint/checkpoint.h"
#include "loom/data/tasks.h"
#include "loom/train/trainer.h"
#include "test_util.h"

using namespace loom;
namespace fs = std::filesystem;

namespace {

TaskConfig config_of(const std::string& name) {
  TaskConfig c;
  c.name = name;
  c.valid_examples = 50;
  c.test_examples = 50;
  return c;
}

std::vector<Example> draw(const Task& task, int n, uint64_t seed = 5) {
  std::mt19937_64 rng(seed);
  std::vector<Example> out;
  for (int i = 0; i < n; ++i) out.push_back(task.sample(rng));
  return out;
}

// ListOps by a stack machine over the rendered text (independent of the generator's recursion).
int64_t evaluate_listops(const std::string& text, int64_t* max_depth) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> stack;
  std::istringstream in(text);
  std::string word;
  int64_t result = -1;
  *max_depth = 0;
  while (in >> word) {
    if (word[0] == '[') {
      stack.push_back({word, {}});
      *max_depth = std::max<int64_t>(*max_depth, static_cast<int64_t>(stack.size()));
      continue;
    }
    int64_t value;
    if (word == "]") {
      auto [op, args] = stack.back();
      stack.pop_back();
      EXPECT_GE(args.size(), 2u) << text;
      std::sort(args.begin(), args.end());
      if (op == "[MIN") value = args.front();
      else if (op == "[MAX") value = args.back();
      else if (op == "[MED")
        value = args.size() % 2 ? args[args.size() / 2] : (args[args.size() / 2 - 1] + args[args.size() / 2]) / 2;
      else value = std::accumulate(args.begin(), args.end(), int64_t{0}) % 10;
    } else {
      value = std::stoll(word);
    }
    if (stack.empty()) result = value;
    else stack.back().second.push_back(value);
  }
  return result;
}

}  // namespace

TEST(Workbench, SelectiveCopyingTargetsAreTheDataTokensInOrder) {
  auto c = config_of("selective_copying");
  c.seq_len = 40, c.n_tokens = 6, c.vocab = 8;
  auto task = make_task(c);
  EXPECT_EQ(task->vocab_size(), 11);
  for (const auto& e : draw(*task, 20)) {
    ASSERT_EQ(static_cast<int64_t>(e.tokens.size()), 46);
    std::vector<int64_t> data, answers;
    for (int i = 0; i < 40; ++i) {
      EXPECT_TRUE(e.tokens[i] == 1 || e.tokens[i] >= 3) << task->render(e.tokens);
      if (e.tokens[i] >= 3) data.push_back(e.tokens[i]);
      EXPECT_EQ(e.targets[i], -1);
    }
    for (int i = 40; i < 46; ++i) {
      EXPECT_EQ(e.tokens[i], 2);  // markers
      answers.push_back(e.targets[i]);
    }
    EXPECT_EQ(data, answers);
  }
}

TEST(Workbench, MqarAnswersEveryKeyWithItsValue) {
  auto c = config_of("mqar");
  c.seq_len = 64, c.n_tokens = 8, c.vocab = 40;
  auto task = make_task(c);
  for (const auto& e : draw(*task, 20)) {
    std::map<int64_t, int64_t> value_of;
    for (int i = 0; i < 16; i += 2) {
      EXPECT_TRUE(value_of.emplace(e.tokens[i], e.tokens[i + 1]).second) << "keys are distinct";
      EXPECT_LT(e.tokens[i], 22);
      EXPECT_GE(e.tokens[i + 1], 22);
    }
    std::set<int64_t> queried;
    for (int i = 16; i < 64; ++i) {
      if (e.targets[i] < 0) continue;
      EXPECT_EQ(e.targets[i], value_of.at(e.tokens[i]));
      EXPECT_EQ(e.tokens[i + 1], e.targets[i]);  // the value follows its query (teacher forcing)
      queried.insert(e.tokens[i]);
    }
    EXPECT_EQ(queried.size(), 8u);
  }
}

TEST(Workbench, InductionHeadsTargetFollowsTheFirstTrigger) {
  auto c = config_of("induction_heads");
  c.seq_len = 30, c.vocab = 10;
  auto task = make_task(c);
  for (const auto& e : draw(*task, 30)) {
    const auto first = std::find(e.tokens.begin(), e.tokens.end(), 1) - e.tokens.begin();
    ASSERT_LT(first, 14);
    EXPECT_EQ(std::count(e.tokens.begin(), e.tokens.end(), 1), 2);
    EXPECT_EQ(e.tokens.back(), 1);
    EXPECT_EQ(e.targets.back(), e.tokens[first + 1]);
    EXPECT_EQ(std::count_if(e.targets.begin(), e.targets.end(), [](int64_t t) { return t >= 0; }), 1);
  }
}

TEST(Workbench, AdditionTextIsRightInBothFormats) {
  for (const std::string format : {"plain", "reversed"}) {
    auto c = config_of("addition");
    c.format = format;
    auto task = make_task(c);
    for (const auto& e : draw(*task, 50)) {
      const std::string text = task->render(e.tokens);
      const bool reversed = format == "reversed";
      ASSERT_EQ(text.front() == '$', reversed) << text;
      const auto plus = text.find('+'), equals = text.find('=');
      const long a = std::stol(text.substr(reversed, plus - reversed)),
                 b = std::stol(text.substr(plus + 1, equals - plus - 1));
      std::string answer = text.substr(equals + 1, text.size() - equals - 2 - reversed);
      if (reversed) std::reverse(answer.begin(), answer.end());
      EXPECT_EQ(std::stol(answer), a + b) << text;
      EXPECT_LE(a, 999);
      // Scored: exactly the characters after '=' (the terminator included), each the next token.
      for (size_t i = 0; i < e.tokens.size(); ++i)
        EXPECT_EQ(e.targets[i], i >= equals && i + 1 < e.tokens.size() ? e.tokens[i + 1] : -1) << text << " at " << i;
      EXPECT_LE(static_cast<int64_t>(e.tokens.size()), task->max_length());
    }
  }
}

TEST(Workbench, ListOpsLabelsLengthsAndDepthsFollowTheRules) {
  auto c = config_of("listops");
  c.min_length = 10, c.max_length = 60, c.max_depth = 4, c.max_args = 5;
  auto task = make_task(c);
  std::set<int64_t> labels;
  for (const auto& e : draw(*task, 200)) {
    int64_t depth = 0;
    EXPECT_EQ(evaluate_listops(task->render(e.tokens), &depth), e.label) << task->render(e.tokens);
    EXPECT_LE(depth, 4);
    EXPECT_GE(static_cast<int64_t>(e.tokens.size()), 10);
    EXPECT_LE(static_cast<int64_t>(e.tokens.size()), 60);
    labels.insert(e.label);
  }
  EXPECT_GE(labels.size(), 8u);
}

TEST(Workbench, SplitsAreDeterministicDisjointAndBatchesReplay) {
  auto c = config_of("addition");
  c.digits = 2;
  c.train_examples = 300;
  const TaskData a(c), b(c);
  std::set<std::vector<int64_t>> held_out;
  for (const std::string split : {"valid", "test"}) {
    ASSERT_EQ(a.split(split).size(), 50u);
    for (size_t i = 0; i < 50; ++i) {
      EXPECT_EQ(a.split(split)[i].tokens, b.split(split)[i].tokens);
      EXPECT_TRUE(held_out.insert(a.split(split)[i].tokens).second) << "held-out examples are distinct";
    }
  }
  for (const auto& e : a.split("train")) EXPECT_FALSE(held_out.count(e.tokens)) << "a training example is held out";
  EXPECT_TRUE(torch::equal(a.sample(7, 3, 1, 16).first, b.sample(7, 3, 1, 16).first));
  EXPECT_FALSE(torch::equal(a.sample(7, 3, 1, 16).first, a.sample(7, 3, 0, 16).first));
  // Unlimited training draws never produce a held-out example either.
  c.train_examples = 0;
  const TaskData unlimited(c);
  for (int step = 0; step < 20; ++step) {
    auto inputs = unlimited.sample(1, step, 0, 32).first;
    for (int64_t i = 0; i < inputs.size(0); ++i) {
      auto row = inputs[i];
      std::vector<int64_t> tokens(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
      while (!tokens.empty() && tokens.back() == 0) tokens.pop_back();
      EXPECT_FALSE(held_out.count(tokens));
    }
  }
  // Too few distinct examples is an error, not a hang.
  c.digits = 1;
  c.valid_examples = 200;
  EXPECT_THROW(TaskData{c}, loom::Error);
}

TEST(Workbench, RecipeErrorsNameTheKey) {
  auto error_of = [](const std::string& yaml) { return error_message([&] { parse_recipe(yaml, "w.yaml"); }); };
  const std::string model =
      "model: {vocab_size: 15, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32, max_seq_len: 16}\n";
  EXPECT_EQ(error_of(model + "task: {name: addition}"), "no error");
  EXPECT_NE(error_of(model + "task: {name: additon}").find("unknown task.name 'additon' (valid: addition,"),
            std::string::npos);
  EXPECT_NE(
      error_of(model + "task: {name: addition, seq_len: 64}").find("task.seq_len does not apply to task 'addition'"),
      std::string::npos);
  EXPECT_NE(error_of(model + "task: {name: addition, format: backwards}").find("task.format"), std::string::npos);
  EXPECT_NE(error_of(model + "task: {name: mqar, n_tokens: 4}").find("set model.vocab_size: 18"), std::string::npos);
  EXPECT_NE(error_of("model: {vocab_size: 16, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32, max_seq_len: 16}\n"
                     "task: {name: listops, min_length: 5, max_length: 14}")
                .find("set model.arch: encoder"),
            std::string::npos);
  const std::string encoder =
      "model: {arch: encoder, n_classes: 10, vocab_size: 16, d_model: 16, n_heads: 2, n_layers: 1, "
      "d_ff: 32, max_seq_len: 16}\n";
  EXPECT_NE(error_of(encoder + "task: {name: listops, min_length: 5, max_length: 16}")
                .find("needs sequences of 17 tokens (CLS included)"),
            std::string::npos);
  EXPECT_EQ(error_of(encoder + "task: {name: listops, min_length: 5, max_length: 15}"), "no error");
  EXPECT_NE(error_of(encoder).find("task lm trains a decoder"), std::string::npos);
}

// Training end to end: a tiny attention model learns associative recall well past chance, the
// checkpoint evaluates through the CLI, and text commands refuse it with a clear error.
TEST(Workbench, TrainingLearnsAndTheCheckpointEvaluates) {
  char pattern[] = "/tmp/loom-workbench-XXXXXX";
  const fs::path root = mkdtemp(pattern);
  const Recipe recipe = parse_recipe(
      "model: {vocab_size: 18, d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, max_seq_len: 16, position: learned}\n"
      "task: {name: mqar, seq_len: 16, n_tokens: 3, vocab: 16, valid_examples: 100, test_examples: 200}\n"
      "train: {steps: 300, batch_size: 32, lr: 3.0e-3, warmup_steps: 20, eval_every: 0, save_every: 0, log_every: 50, "
      "precision: fp32}\n",
      "mqar-tiny");
  TrainOptions options;
  options.out_dir = (root / "run").string();
  const auto result = train(recipe, options);
  ASSERT_TRUE(result.test.has_value());
  EXPECT_EQ(result.test->examples, 200);
  // Chance is 1/8 per answer token (8 values); 300 steps reach 0.475 (misaligned targets could
  // not beat chance).
  EXPECT_GT(result.test->token_accuracy, 0.3) << "loss " << result.test->loss;
  EXPECT_LE(result.test->exact_match, result.test->token_accuracy + 1e-9);

  auto r = run_loom("--threads 1 eval " + result.checkpoint);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(fmt::format("test exact match {:.1f}%", 100 * result.test->exact_match)), std::string::npos)
      << r.output;
  r = run_loom("generate " + result.checkpoint + " --prompt hi");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("generated task 'mqar'"), std::string::npos) << r.output;
  fs::remove_all(root);
}
