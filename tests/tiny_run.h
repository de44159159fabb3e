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
