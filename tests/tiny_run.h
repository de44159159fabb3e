// Shared by the training tests: a throwaway directory with a small generated corpus, "tiny",
// and a tiny model's recipe that trains in well under a second per step on 2 cores.
#pragma once
#include <stdlib.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>

#include "loom/checkpoint/checkpoint.h"
#include "test_util.h"

class TinyRun {
 public:
  TinyRun() {
    char pattern[] = "/tmp/loom-train-test-XXXXXX";
    root = mkdtemp(pattern);
    const std::filesystem::path corpus = root / "data" / "tiny";
    std::filesystem::create_directories(corpus);
    std::mt19937 rng(7);
    const std::array<const char*, 12> words{"the", "cat", "sat", "on", "a",    "mat",
                                            "and", "dog", "ran", "to", "hall", "quickly"};
    for (const auto& [name, lines] :
         {std::pair{"train.txt", 400}, std::pair{"valid.txt", 40}, std::pair{"test.txt", 40}}) {
      std::ofstream out(corpus / name);
      for (int i = 0; i < lines; ++i) {
        for (int w = 0; w < 12; ++w) out << (w ? " " : "") << words[rng() % words.size()];
        out << " " << i % 97 << ".\n";
      }
    }
  }
  ~TinyRun() { std::filesystem::remove_all(root); }
  TinyRun(const TinyRun&) = delete;
  TinyRun& operator=(const TinyRun&) = delete;

  std::string recipe_yaml() const {
    return "format: 1\n"
           "model: {vocab_size: 300, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64, max_seq_len: 32, dropout: 0.1}\n"
           "data: {corpus: tiny, dir: " +
           (root / "data").string() +
           "}\n"
           "train: {steps: 12, batch_size: 4, warmup_steps: 2, eval_every: 6, eval_batches: 2, save_every: 4, "
           "keep_last: 5, log_every: 3, lr: 0.003, precision: fp32}\n";
  }

  std::filesystem::path root;
};

// How far two checkpoints' weights are apart: ||a - b|| / ||b|| over all the weights together.
// (Element-wise comparisons mislead after AdamW steps: a parameter whose true gradient is exactly
// zero, such as the key bias of softmax attention, gets updates from rounding noise alone, which
// AdamW scales to the learning rate.)
inline double relative_weight_difference(const std::string& a, const std::string& b) {
  auto wa = loom::load_checkpoint(a).model->named_parameters();
  auto wb = loom::load_checkpoint(b).model->named_parameters();
  if (wa.size() != wb.size()) return INFINITY;
  double diff = 0, norm = 0;
  for (const auto& item : wa) {
    const auto x = item.value().to(torch::kDouble), y = wb[item.key()].to(torch::kDouble);
    diff += (x - y).pow(2).sum().item<double>();
    norm += y.pow(2).sum().item<double>();
  }
  return std::sqrt(diff / norm);
}

// A fixture for `loom train` runs of the tiny model on the tiny corpus: 6 fp32 steps, every step
// logged, checkpoints at steps 3 and 6. `model` and `train` add flow-YAML keys to those sections.
class TinyTraining : public ::testing::Test {
 public:
  std::string recipe(const std::string& model, const std::string& train) {
    static int n = 0;
    const std::string path = (run_.root / ("recipe" + std::to_string(n++) + ".yaml")).string();
    std::ofstream(path) << "format: 1\n"
                        << "model: {vocab_size: 300, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64, max_seq_len: 32"
                        << (model.empty() ? "" : ", ") << model << "}\n"
                        << "data: {corpus: tiny, dir: " << (run_.root / "data").string() << "}\n"
                        << "train: {steps: 6, warmup_steps: 2, eval_batches: 2, save_every: 3, keep_last: 5, "
                        << "log_every: 1, lr: 0.003, precision: fp32, " << train << "}\n";
    return path;
  }
  std::string out(const std::string& name) const { return (run_.root / name).string(); }
  // `loom --threads 1 train ARGS`, checked to succeed; returns its output.
  std::string train(const std::string& args) {
    auto r = run_loom("--threads 1 train " + args);
    EXPECT_EQ(r.status, 0) << r.output;
    return r.output;
  }

 protected:
  TinyRun run_;
};
