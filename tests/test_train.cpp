// Recipes, training, exact resume, checkpoints, and the CLI's answers to bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "loom/checkpoint/checkpoint.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/io/safetensors.h"
#include "loom/search/space.h"
#include "loom/train/trainer.h"
#include "test_util.h"
#include "tiny_run.h"

using namespace loom;
namespace fs = std::filesystem;

namespace {

Safetensors weights(const std::string& dir) { return load_safetensors(dir + "/model.safetensors"); }

void expect_same_tensors(const Safetensors& a, const Safetensors& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].first, b.tensors[i].first);
    EXPECT_TRUE(torch::equal(a.tensors[i].second, b.tensors[i].second)) << a.tensors[i].first;
  }
}

}  // namespace

TEST(Recipe, RoundTripsThroughYaml) {
  auto recipe = parse_recipe(
      "model: {d_model: 64, n_heads: 4, layers: [attention, attention], n_layers: 2}\n"
      "train: {lr: 0.1, precision: fp32}",
      "inline");
  auto again = parse_recipe(recipe_to_yaml(recipe), "saved");
  EXPECT_EQ(recipe_to_yaml(again), recipe_to_yaml(recipe));
  EXPECT_EQ(again.model.d_model, 64);
  EXPECT_EQ(again.model.layers, (std::vector<std::string>{"attention", "attention"}));
  EXPECT_DOUBLE_EQ(again.train.lr, 0.1);
}

TEST(Recipe, OverridesApplyAndCreateSections) {
  auto recipe = parse_recipe(
      "", "inline", {"model.d_model=128", "train.precision=fp32", "model.layers=[attention]", "model.n_layers=1"});
  EXPECT_EQ(recipe.model.d_model, 128);
  EXPECT_EQ(recipe.train.precision, "fp32");
  EXPECT_EQ(recipe.model.layers.size(), 1u);
}

TEST(Recipe, ErrorsNameTheKeyAndTheFile) {
  auto error_of = [](const std::string& yaml, std::vector<std::string> overrides = {}) {
    return error_message([&] { parse_recipe(yaml, "my.yaml", overrides); });
  };
  auto has = [](const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; };
  std::string e = error_of("model: {d_modle: 3}");
  EXPECT_TRUE(has(e, "my.yaml") && has(e, "unknown key 'model.d_modle'")) << e;
  e = error_of("trian: {}");
  EXPECT_TRUE(has(e, "unknown key 'trian'")) << e;
  e = error_of("model: {d_model: abc}");
  EXPECT_TRUE(has(e, "model.d_model") && has(e, "abc") && has(e, "integer")) << e;
  e = error_of("model: {d_model: 100, n_heads: 3}");
  EXPECT_TRUE(has(e, "divisible")) << e;
  e = error_of("model: {ffn: swishglu}");
  EXPECT_TRUE(has(e, "swishglu") && has(e, "swiglu")) << e;
  e = error_of("model: {n_layers: 2, layers: [attention, hyena]}");
  EXPECT_TRUE(has(e, "layer 1") && has(e, "hyena") && has(e, "valid: attention, ") && has(e, "mamba")) << e;
  e = error_of("train: {precision: fp8}");
  EXPECT_TRUE(has(e, "train.precision")) << e;
  e = error_of("model: [1, 2]");
  EXPECT_TRUE(has(e, "map")) << e;
  e = error_of("model: {d_model: 64", {});
  EXPECT_TRUE(has(e, "not valid YAML")) << e;
  e = error_of("", {"model.nope=1"});
  EXPECT_TRUE(has(e, "unknown key 'model.nope'")) << e;
  e = error_of("", {"model.d_model"});
  EXPECT_TRUE(has(e, "key=value")) << e;
  e = error_of("format: 2");
  EXPECT_TRUE(has(e, "format 2")) << e;
  e = error_of("train: {steps: 12, batch_size: 4, steps: 4}");  // yaml-cpp keeps the first silently
  EXPECT_TRUE(has(e, "key 'train.steps' appears twice")) << e;
  // Found by fuzzing: a document that is one scalar escaped as yaml-cpp's exception, with or
  // without an override to set into it.
  for (const std::vector<std::string>& overrides : {std::vector<std::string>{}, {"model.d_model=8"}}) {
    e = error_of("# a comment\n just words: no, a plain scalar\n  continued", overrides);
    EXPECT_TRUE(has(e, "my.yaml") || has(e, "--set")) << e;
    e = error_of("just a string", overrides);
    EXPECT_TRUE(has(e, "mapping")) << e;
  }
}

TEST(Train, ResumeEqualsUninterruptedRun) {
  TinyRun tiny;
  const Recipe recipe = parse_recipe(tiny.recipe_yaml(), "tiny");
  TrainOptions straight;
  straight.out_dir = (tiny.root / "straight").string();
  const auto a = train(recipe, straight);
  EXPECT_EQ(a.steps, 12);
  EXPECT_TRUE(std::isfinite(a.valid_loss));
  EXPECT_LT(a.valid_loss, std::log(300.0));  // learned something beyond a uniform guess

  // Stop after 5 steps (a checkpoint off the save_every grid), then resume twice.
  TrainOptions first;
  first.out_dir = (tiny.root / "interrupted").string();
  first.stop_after = 5;
  const auto b1 = train(recipe, first);
  EXPECT_TRUE(b1.interrupted);
  EXPECT_EQ(b1.steps, 5);
  TrainOptions second;
  second.resume = b1.checkpoint;
  second.stop_after = 4;
  const auto b2 = train(recipe, second);
  EXPECT_EQ(b2.steps, 9);
  TrainOptions third;
  third.resume = (tiny.root / "interrupted").string();  // a run dir: its newest checkpoint
  const auto b3 = train(recipe, third);
  EXPECT_EQ(b3.steps, 12);

  expect_same_tensors(weights(a.checkpoint), weights(b3.checkpoint));
  expect_same_tensors(load_safetensors(a.checkpoint + "/optimizer.safetensors"),
                      load_safetensors(b3.checkpoint + "/optimizer.safetensors"));
  EXPECT_EQ(a.valid_loss, b3.valid_loss);
  // Checkpoints on the grid and at the stops, newest last.
  const auto listed = list_checkpoints(straight.out_dir);
  ASSERT_EQ(listed.size(), 3u);
  EXPECT_EQ(fs::path(listed.back()).filename(), "step-000012");
}

// The rows of a run's metrics.jsonl.
std::vector<nlohmann::json> metric_rows(const std::string& run_dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

bool all_finite(const Safetensors& t) {
  for (const auto& [name, tensor] : t.tensors)
    if (!torch::isfinite(tensor).all().item<bool>()) return false;
  return true;
}

// Found by fuzzing: a trainer.json number that is not an integer (1e300 steps) was converted to
// an integer by JSON's library, undefined behaviour; it is a corrupt state, said so.
TEST(Train, ATrainerStateWithAFloatStepIsCorrupt) {
  TinyRun tiny;
  TrainOptions options;
  options.out_dir = (tiny.root / "run").string();
  const auto result = train(parse_recipe(tiny.recipe_yaml(), "tiny", {"train.steps=2"}), options);
  const std::string path = result.checkpoint + "/trainer.json";
  const std::string saved = read_file(path);
  for (const char* field : {"step", "format", "rollbacks"}) {
    auto state = nlohmann::json::parse(saved);
    state[field] = 1e300;
    std::ofstream(path) << state.dump();
    const std::string e = error_message([&] { load_checkpoint(result.checkpoint); });
    EXPECT_NE(e.find("corrupt trainer state"), std::string::npos) << field << ": " << e;
    EXPECT_NE(e.find(field), std::string::npos) << e;
  }
}

// train.on_divergence: rollback. A NaN at step 6 (its loss, and a weight poisoned) sends the run
// back to its step-4 checkpoint with the batches of steps 4-6 skipped; it finishes with finite
// weights, logs the rollback once, and the state it saves resumes exactly.
TEST(Train, ANanStepRollsBackSkipsItsBatchesAndFinishes) {
  TinyRun tiny;
  const Recipe recipe = parse_recipe(tiny.recipe_yaml(), "tiny", {"train.on_divergence=rollback"});
  auto inject = [](bool* done) {
    return [done](int64_t step, StepResult& r, Model& model) {
      if (step != 6 || *done) return;
      *done = true;
      r.loss = std::nan("");
      torch::NoGradGuard no_grad;
      model->parameters()[0].fill_(std::nan(""));
    };
  };
  bool injected = false;
  TrainOptions options;
  options.out_dir = (tiny.root / "run").string();
  options.after_step = inject(&injected);
  const auto a = train(recipe, options);
  EXPECT_TRUE(injected);
  EXPECT_EQ(a.steps, 12);
  EXPECT_TRUE(std::isfinite(a.valid_loss));
  EXPECT_TRUE(all_finite(weights(a.checkpoint)));
  const auto state = nlohmann::json::parse(read_file(a.checkpoint + "/trainer.json"));
  EXPECT_EQ(state["data_offset"], 3);
  EXPECT_EQ(state["rollbacks"], 1);
  int rollbacks = 0;
  std::map<int64_t, int> loss_rows;
  for (const auto& row : metric_rows(options.out_dir)) {
    if (row.contains("event")) {
      ++rollbacks;
      EXPECT_EQ(row["step"], 6);
      EXPECT_EQ(row["to_step"], 4);
      EXPECT_NE(row["reason"].get<std::string>().find("nan"), std::string::npos) << row;
    }
    if (row.contains("loss")) ++loss_rows[row["step"].get<int64_t>()];
  }
  EXPECT_EQ(rollbacks, 1);
  EXPECT_EQ(loss_rows, (std::map<int64_t, int>{{3, 1}, {6, 1}, {9, 1}, {12, 1}}));

  // The same run again is the same run; resumed from its step-8 checkpoint (after the rollback), too.
  bool injected_again = false;
  TrainOptions again;
  again.out_dir = (tiny.root / "again").string();
  again.after_step = inject(&injected_again);
  expect_same_tensors(weights(train(recipe, again).checkpoint), weights(a.checkpoint));
  TrainOptions resumed;
  resumed.resume = options.out_dir + "/step-000008";
  resumed.out_dir = (tiny.root / "resumed").string();
  expect_same_tensors(weights(train(recipe, resumed).checkpoint), weights(a.checkpoint));
}

TEST(Train, DivergenceStopsWithoutRollbackOrAfterMaxRollbacks) {
  TinyRun tiny;
  auto nan_from = [](int64_t first) {
    return [first](int64_t step, StepResult& r, Model&) {
      if (step >= first) r.loss = std::nan("");
    };
  };
  TrainOptions stop;
  stop.out_dir = (tiny.root / "stop").string();
  stop.after_step = nan_from(6);
  try {
    train(parse_recipe(tiny.recipe_yaml(), "tiny"), stop);
    FAIL() << "a NaN loss did not stop the run";
  } catch (const TrainingDiverged& e) {
    EXPECT_NE(std::string(e.what()).find("on_divergence"), std::string::npos) << e.what();
  }
  TrainOptions bounded;
  bounded.out_dir = (tiny.root / "bounded").string();
  bounded.after_step = nan_from(6);
  try {
    train(parse_recipe(tiny.recipe_yaml(), "tiny", {"train.on_divergence=rollback", "train.max_rollbacks=2"}), bounded);
    FAIL() << "a run that diverges at every step did not stop";
  } catch (const TrainingDiverged& e) {
    EXPECT_NE(std::string(e.what()).find("after 2 rollbacks"), std::string::npos) << e.what();
  }
}

// A loss spike (here 10x, injected at step 24) beyond train.spike_factor times the running mean
// rolls back too, and lowers the learning rate by train.rollback_lr_factor.
TEST(Train, ALossSpikeRollsBackAndLowersTheLearningRate) {
  TinyRun tiny;
  const Recipe recipe = parse_recipe(tiny.recipe_yaml(), "tiny",
                                     {"train.steps=28", "train.on_divergence=rollback", "train.spike_factor=3",
                                      "train.rollback_lr_factor=0.5", "model.dropout=0"});
  TrainOptions options;
  options.out_dir = (tiny.root / "run").string();
  bool spiked = false;
  options.after_step = [&spiked](int64_t step, StepResult& r, Model&) {
    if (step == 24 && !spiked) spiked = true, r.loss *= 10;
  };
  const auto result = train(recipe, options);
  EXPECT_EQ(result.steps, 28);
  const auto state = nlohmann::json::parse(read_file(result.checkpoint + "/trainer.json"));
  EXPECT_EQ(state["rollbacks"], 1);
  EXPECT_EQ(state["lr_scale"], 0.5);
  EXPECT_EQ(state["data_offset"], 24 + 1 - 24);  // rolled back to the step-24 checkpoint (save_every 4)
  bool logged = false;
  for (const auto& row : metric_rows(options.out_dir))
    if (row.contains("event")) logged = row["reason"].get<std::string>().find("spiked") != std::string::npos;
  EXPECT_TRUE(logged);
}

TEST(Train, RefusesToOverwriteARunAndKeepsItIntact) {
  TinyRun tiny;
  Recipe recipe = parse_recipe(tiny.recipe_yaml(), "tiny", {"train.steps=4"});
  TrainOptions options;
  options.out_dir = (tiny.root / "run").string();
  const auto first = train(recipe, options);
  const std::string before = read_file(first.checkpoint + "/model.safetensors");
  EXPECT_THROW(train(recipe, options), loom::Error);
  EXPECT_EQ(read_file(first.checkpoint + "/model.safetensors"), before);
  // A finished run cannot be resumed without more steps.
  TrainOptions resume;
  resume.resume = first.checkpoint;
  EXPECT_THROW(train(recipe, resume), loom::Error);
}

class Cli : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    tiny_ = new TinyRun;
    TrainOptions options;
    options.out_dir = (tiny_->root / "run").string();
    checkpoint_ = train(parse_recipe(tiny_->recipe_yaml(), "tiny", {"train.steps=4"}), options).checkpoint;
  }
  static void TearDownTestSuite() { delete tiny_; }
  static TinyRun* tiny_;
  static std::string checkpoint_;

  std::string write(const std::string& name, const std::string& text) {
    const auto path = (tiny_->root / name).string();
    std::ofstream(path) << text;
    return path;
  }
  std::string copy_checkpoint(const std::string& name) {
    const auto dir = tiny_->root / name;
    fs::copy(checkpoint_, dir, fs::copy_options::recursive);
    return dir.string();
  }
};
TinyRun* Cli::tiny_ = nullptr;
std::string Cli::checkpoint_;

// A language model cannot translate: one clear line. (No translation checkpoint exists to test the
// streaming path with; translate_batch itself is tested in test_translate.cpp.)
TEST_F(Cli, TranslateNeedsAnEncoderDecoder) {
  expect_one_line_error(run_loom("translate " + checkpoint_ + " < /dev/null"), "model.arch encoder_decoder");
  expect_one_line_error(run_loom("translate " + checkpoint_ + " --beam 2 --nbest 3 < /dev/null"), "--nbest 3");
  expect_one_line_error(run_loom("translate " + checkpoint_ + " --sample --beam 2 < /dev/null"), "--beam 1");
}

// A random encoder-decoder with the tiny run's tokenizer: the streaming CLI's output lines, one
// per input in order, blank lines answered without the model.
TEST_F(Cli, TranslateWritesOneLinePerInputInOrder) {
  auto loaded = load_checkpoint(checkpoint_);
  loaded.recipe.model.arch = "encoder_decoder";
  loaded.recipe.task.name = "translation";
  Model model(loaded.recipe.model);
  AdamW optimizer({}, 0.9, 0.95, 1e-8);
  const auto dir = save_checkpoint((tiny_->root / "translation").string(), loaded.recipe, model, &loaded.tokenizer,
                                   optimizer.state(), TrainerState{}, 1);
  auto r = run_loom("--threads 1 translate " + dir + " --beam 2 --max-len-b 3 < " +
                    write("source.txt", "the cat\n\n  \nsat on"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<std::string> lines;
  std::stringstream out(r.output);
  for (std::string line; std::getline(out, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 4u) << r.output;
  EXPECT_FALSE(lines[0].empty());
  EXPECT_TRUE(lines[1].empty() && lines[2].empty()) << r.output;
  r = run_loom("--threads 1 translate " + dir + " --beam 3 --nbest 2 --max-len-b 3 < " + write("two.txt", "a\nb\n"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("0\t", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("\n1\t"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 4) << r.output;
}

TEST_F(Cli, GenerateAndEvalWork) {
  auto r = run_loom("--threads 1 generate " + checkpoint_ + " --prompt 'the cat' --max-new-tokens 5 --temperature 0");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("the cat", 0), 0u) << r.output;
  r = run_loom("eval " + checkpoint_ + " --threads 1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("perplexity"), std::string::npos) << r.output;
}

TEST_F(Cli, BadRecipesGiveOneLineErrors) {
  expect_one_line_error(run_loom("train /nonexistent/recipe.yaml"), "cannot read recipe '/nonexistent/recipe.yaml'");
  expect_one_line_error(run_loom("train " + write("unknown.yaml", "model: {widht: 3}\n")), "unknown key 'model.widht'");
  expect_one_line_error(run_loom("train " + write("block.yaml", "model: {norm: batchnorm}\n")),
                        "unknown norm block 'batchnorm'");
  expect_one_line_error(run_loom("train --set model.n_heads=0"), "model.n_heads must be positive");
}

TEST_F(Cli, DamagedCheckpointsGiveOneLineErrorsAndStayAsTheyWere) {
  const auto truncated = copy_checkpoint("truncated");
  const auto weights_path = truncated + "/model.safetensors";
  const std::string full = read_file(weights_path);
  std::ofstream(weights_path, std::ios::binary | std::ios::trunc)
      .write(full.data(), static_cast<long>(full.size() / 2));
  const std::string damaged = read_file(weights_path);
  expect_one_line_error(run_loom("generate " + truncated + " --prompt hi"), "model.safetensors");
  EXPECT_EQ(read_file(weights_path), damaged);

  const auto corrupt = copy_checkpoint("corrupt");
  std::ofstream(corrupt + "/model.safetensors", std::ios::binary | std::ios::trunc)
      << "\x10\0\0\0\0\0\0\0{not json}      ";
  expect_one_line_error(run_loom("eval " + corrupt), "model.safetensors");

  const auto no_recipe = copy_checkpoint("no-recipe");
  fs::remove(no_recipe + "/recipe.yaml");
  expect_one_line_error(run_loom("generate " + no_recipe), "recipe.yaml");

  expect_one_line_error(run_loom("generate " + (tiny_->root / "nothing").string()), "no checkpoint");
}

TEST_F(Cli, PromptLongerThanTheContextIsAnError) {
  std::string prompt;
  for (int i = 0; i < 40; ++i) prompt += "the cat sat ";
  expect_one_line_error(run_loom("generate " + checkpoint_ + " --prompt '" + prompt + "'"), "context is 32 tokens");
}

TEST_F(Cli, ResumeRejectsARecipeArgument) {
  expect_one_line_error(run_loom("train recipes/x.yaml --resume " + checkpoint_), "--resume");
}

TEST(Recipe, ShippedRecipesParseAndDefaultMatchesBuiltIn) {
  const fs::path dir = fs::path(LOOM_SOURCE_DIR) / "recipes";
  int count = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    // recipes/search/ holds architecture search files (search/space.h), each over a base recipe.
    if (entry.path().parent_path().filename() == "search") EXPECT_NO_THROW(load_search_space(entry.path().string()));
    else EXPECT_NO_THROW(load_recipe(entry.path().string()));
    ++count;
  }
  EXPECT_GE(count, 5);
  EXPECT_EQ(recipe_to_yaml(load_recipe((dir / "default.yaml").string())), recipe_to_yaml(default_recipe()));
  // The two standard configurations differ where GPT-2 and LLaMA differ.
  const auto gpt2 = load_recipe((dir / "gpt2-tiny.yaml").string()).model;
  const auto llama = load_recipe((dir / "llama-tiny.yaml").string()).model;
  EXPECT_EQ(gpt2.position, "learned");
  EXPECT_EQ(llama.position, "rope");
  EXPECT_EQ(llama.norm, "rmsnorm");
  EXPECT_EQ(llama.ffn, "swiglu");
  EXPECT_LT(llama.kv_heads(), llama.n_heads);
  EXPECT_FALSE(llama.bias);
}
