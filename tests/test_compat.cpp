// Checkpoint files are a format users keep: tests/data/checkpoint-v1 was written by loom at 0229e51
// (before the library's layers, block options and parameter roles were reorganized), with a tiny
// GPT-2-style recipe trained 60 steps on a generated corpus, and checkpoint-v1.expected.tsv holds
// what that loom's `generate` printed from it. Today's loom must load it and print the same.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "loom/checkpoint/checkpoint.h"
#include "loom/infer/generate.h"
#include "loom/train/adamw.h"
#include "test_util.h"

using namespace loom;

namespace {

const std::string kDir = std::string(LOOM_SOURCE_DIR) + "/tests/data/checkpoint-v1";

struct Expected {
  std::string prompt, temperature, seed, output;
};

std::vector<Expected> expected_outputs() {
  std::ifstream in(kDir + ".expected.tsv");
  std::vector<Expected> out;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::stringstream fields(line);
    Expected e;
    std::getline(fields, e.prompt, '\t');
    std::getline(fields, e.temperature, '\t');
    std::getline(fields, e.seed, '\t');
    std::getline(fields, e.output);
    out.push_back(e);
  }
  return out;
}

}  // namespace

TEST(CheckpointCompat, VersionOneCheckpointLoadsWithItsRecipeAndOptimizerState) {
  auto loaded = load_checkpoint(kDir);
  EXPECT_EQ(loaded.state.step, 60);
  EXPECT_EQ(loaded.recipe.model.d_model, 32);
  EXPECT_EQ(loaded.recipe.model.local_attention.window, 64);  // a block option, read from its flat key
  EXPECT_EQ(loaded.recipe.model.moe.n_experts, 8);
  EXPECT_TRUE(loaded.has_tokenizer);
  EXPECT_EQ(loaded.model->num_parameters(), 28288);  // the elements of model.safetensors' 28 tensors
  // The recipe writes back to the same YAML (every key, same order), plus the keys added since
  // version 1 was written, at their defaults: the divergence guard's, the multi-process ones and
  // the per-layer widths of architecture search's sub-models.
  std::ifstream in(kDir + "/recipe.yaml");
  const std::string saved((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string written = recipe_to_yaml(loaded.recipe);
  for (const std::string added :
       {"tensor_parallel: 1", "bucket_mb: 25", "on_divergence: stop", "max_rollbacks: 3", "spike_factor: 0",
        "rollback_lr_factor: 1", "head_dim: 0", "layer_d_ff: []", "layer_heads: []"}) {
    const size_t at = written.find("\n  " + added + "  #");
    ASSERT_NE(at, std::string::npos) << added;
    written.erase(at + 1, written.find('\n', at + 1) - at);
  }
  EXPECT_EQ(written, saved);
  // The optimizer state restores (every moment present with its parameter's shape).
  std::vector<AdamWGroup> groups(1);
  for (auto& p : loaded.model->named_parameters()) groups[0].params.push_back({p.key(), p.value()});
  AdamW optimizer(groups, 0.9, 0.95, 1e-8);
  load_optimizer_state(kDir, optimizer);
  EXPECT_EQ(optimizer.step_count(), 60);
}

// `loom generate` prints what the loom that wrote the checkpoint printed: greedy and sampled.
TEST(CheckpointCompat, VersionOneCheckpointGeneratesAsBefore) {
  const auto expected = expected_outputs();
  ASSERT_EQ(expected.size(), 5u);
  for (const auto& e : expected) {
    auto r = run_loom("--threads 1 generate " + kDir + " --prompt '" + e.prompt + "' --temperature " + e.temperature +
                      " --seed " + e.seed + " --max-new-tokens 24");
    ASSERT_EQ(r.status, 0) << r.output;
    // What stdout printed: stderr's log lines ("[hh:mm:ss] info: ...\n") are cut out, also where
    // one landed inside a line of stdout (the prompt is printed before the engine is made).
    static const std::regex log_line(R"(\[\d\d:\d\d:\d\d\] [a-z]+: [^\n]*\n)");
    const std::string printed = std::regex_replace(r.output, log_line, "");
    EXPECT_EQ(printed, e.output + "\n") << e.prompt << " at temperature " << e.temperature;
  }
}
