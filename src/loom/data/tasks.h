// The workbench: synthetic tasks that loom generates itself (no data files), each with a held-out
// metric. A recipe picks one with `task.name`; `lm` (the default) is language modelling on
// data.corpus instead.
//
//   selective_copying  copy the n_tokens data tokens scattered among seq_len noise tokens, in
//                      order, one per trailing marker (Gu & Dao 2023, Mamba, section 4.1.1)
//   mqar               multi-query associative recall: n_tokens key-value pairs, then every key
//                      queried once, in random order (Arora et al. 2023, Zoology)
//   induction_heads    a trigger token followed by a random token b, then noise, and the trigger
//                      again at the end: predict b (Olsson et al. 2022; H3; Mamba)
//   addition           `digits`-digit addition as text, plain `128+367=495` or reversed
//                      `$128+367=594$` (Lee et al. 2023, Teaching Arithmetic to Small Transformers)
//   listops            nested MIN/MAX/MED/SM expressions (LRA's generator rules), classify the
//                      value 0-9 with an encoder (Tay et al. 2021, Long Range Arena)
//
// Token id 0 is padding in every task. Sequence tasks are scored by exact match (every answer
// token right under argmax, which with teacher forcing equals greedy decoding) and token accuracy;
// listops by accuracy. Held-out splits (valid, test) are drawn from task.seed alone, so every run
// of a recipe sees the same ones, and no training example equals a held-out one.
#pragma once
#include <memory>
#include <random>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace loom {

struct TaskConfig {
  std::string name = "lm";
  int64_t seq_len = 256;
  int64_t n_tokens = 16;
  int64_t vocab = 16;
  std::string format = "plain";
  int64_t digits = 3;
  int64_t min_length = 500;
  int64_t max_length = 2000;
  int64_t max_depth = 10;
  int64_t max_args = 10;
  int64_t train_examples = 0;
  int64_t valid_examples = 500;
  int64_t test_examples = 1000;
  int64_t seed = 1;

  template <class V>
  void visit(V& v) {
    v("name", name, "lm (language modelling on data.corpus) or a workbench task: selective_copying, mqar, "
                    "induction_heads, addition, listops");
    v("seq_len", seq_len, "selective_copying: noise region length; mqar, induction_heads: sequence length");
    v("n_tokens", n_tokens, "selective_copying: tokens to copy; mqar: key-value pairs");
    v("vocab", vocab, "selective_copying: data tokens; mqar: keys + values (half each); induction_heads: "
                      "content tokens");
    v("format", format, "addition: plain (128+367=495) or reversed ($128+367=594$)");
    v("digits", digits, "addition: digits of each operand (numbers 0 .. 10^digits - 1)");
    v("min_length", min_length, "listops: fewest tokens of an expression");
    v("max_length", max_length, "listops: most tokens of an expression");
    v("max_depth", max_depth, "listops: deepest operator nesting");
    v("max_args", max_args, "listops: most arguments of an operator (fewest: 2)");
    v("train_examples", train_examples, "size of a fixed training set; 0 = a fresh example every time");
    v("valid_examples", valid_examples, "validation examples (held out)");
    v("test_examples", test_examples, "test examples (held out), scored at the end of training");
    v("seed", seed, "seed of the held-out splits and of a fixed training set");
  }
  // Checks ranges and that only keys of the chosen task differ from their defaults.
  void validate(const std::string& source) const;
  bool is_lm() const { return name == "lm"; }
};

// One example. Sequence tasks: `targets` has tokens.size() entries, the next token to predict
// at each position or -1 where nothing is scored. Classification tasks: `label`.
struct Example {
  std::vector<int64_t> tokens;
  std::vector<int64_t> targets;
  int64_t label = -1;
};

class Task {
 public:
  virtual ~Task() = default;
  virtual int64_t vocab_size() const = 0;  // token ids 0 .. vocab_size - 1; 0 is padding
  virtual int64_t max_length() const = 0;  // the longest example; batches are padded to it
  virtual int64_t n_classes() const { return 0; }  // > 0: a classification task
  virtual Example sample(std::mt19937_64& rng) const = 0;
  virtual std::string render(const std::vector<int64_t>& tokens) const = 0;  // human-readable
};

std::unique_ptr<Task> make_task(const TaskConfig& config);

// inputs [B, L] (0-padded to L = the task's max_length) and targets: [B, L] (-1 = not scored)
// for sequence tasks, [B] labels for classification tasks.
using TaskBatch = std::pair<torch::Tensor, torch::Tensor>;

// The splits of a task and its batches.
class TaskData {
 public:
  explicit TaskData(const TaskConfig& config);
  const Task& task() const { return *task_; }
  // Training micro-batch `micro` of step `step`: a deterministic function of its arguments (so a
  // resumed run sees the same batches), from the fixed training set or freshly generated.
  TaskBatch sample(uint64_t seed, int64_t step, int64_t micro, int64_t batch_size) const;
  // A held-out split ("valid" or "test") in batches of batch_size.
  std::vector<TaskBatch> split_batches(const std::string& split, int64_t batch_size) const;
  const std::vector<Example>& split(const std::string& split) const;
  // The most frequent training label and its share of the split (classification tasks).
  std::pair<int64_t, double> majority_baseline(const std::string& split) const;

 private:
  Example draw_training(std::mt19937_64& rng) const;  // an example outside the held-out splits
  TaskBatch collate(const std::vector<const Example*>& examples) const;

  TaskConfig config_;
  std::unique_ptr<Task> task_;
  std::vector<Example> train_, valid_, test_;
  std::unordered_set<std::string> held_out_;  // token sequences of valid and test
};

}  // namespace loom
