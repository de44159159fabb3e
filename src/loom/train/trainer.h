// The training loop: data preparation, the TrainStep loop, validation, metrics (JSON lines),
// progress, checkpoints, exact resume, and a clean stop on SIGINT/SIGTERM (a checkpoint is
// written first, so the run can be resumed).
#pragma once
#include <fstream>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "loom/checkpoint/recipe.h"
#include "loom/core/error.h"
#include "loom/data/lm_data.h"
#include "loom/data/tasks.h"
#include "loom/data/translation_data.h"
#include "loom/train/train_step.h"

namespace loom {

struct TrainOptions {
  std::string out_dir;      // run directory: checkpoints and metrics.jsonl
  std::string resume;       // a checkpoint or run directory to continue from exactly
  int64_t steps = -1;       // overrides train.steps when >= 0 (also on resume)
  int64_t stop_after = -1;  // stop (with a checkpoint) after this many steps of this invocation
  // Fault injection, for tests: called after each optimizer step with its result and the model
  // (set the loss to NaN, scale it, poison a weight), as if the step had gone so.
  std::function<void(int64_t step, StepResult& result, Model& model)> after_step;
  // Data parallel over the communicator's ranks (dist/dist.h; nullptr: this process alone). Every
  // rank calls train() with the same arguments; rank 0's recipe, weights and state are the run's
  // (the others need neither the recipe file nor the checkpoint), and only rank 0 validates,
  // writes checkpoints and metrics, and shows progress. The data of a step is the recipe's
  // batch_size x grad_accum sequences whatever the number of ranks, so a run may resume on
  // another number of them.
  Communicator* dist = nullptr;
};

struct TrainResult {
  std::string run_dir;
  std::string checkpoint;      // the last checkpoint written
  int64_t steps = 0;           // optimizer steps completed in total
  double valid_loss = 0;       // nats per token on the validation split, at the end
  double unigram_entropy = 0;  // task lm: nats per token of the training tokens' unigram distribution
  bool interrupted = false;
  std::optional<TaskScore> test;  // generated tasks: scores on the held-out test split
  double majority_accuracy = 0;   // classification tasks: test accuracy of always the majority class
};

// Thrown by train() when the training loss becomes NaN or infinite: the run diverged (a result for
// an LR sweep, not a bug). Other failures are plain loom::Error.
class TrainingDiverged : public Error {
 public:
  using Error::Error;
};

TrainResult train(Recipe recipe, const TrainOptions& options);

// What a run trains and validates on: the corpus (task lm), the parallel corpus (translation) or a
// generated workbench task. Batches are a pure function of (train.seed, step, micro), so a resumed
// run sees the same ones.
struct RunData {
  std::function<Batch(int64_t step, int64_t micro)> sample;
  std::vector<Batch> valid;
  int64_t sequence_length = 0;  // tokens per training sequence (padding included)
  std::string summary;          // for the start-up log line
  // Task lm: the tokenizer, its token streams (the batchers point into them), unigram entropy.
  std::optional<Tokenizer> tokenizer;
  std::unique_ptr<TokenStream> train_tokens, valid_tokens;
  std::unique_ptr<LMBatcher> batcher;
  double unigram_entropy = std::nan("");
  // Generated tasks.
  std::unique_ptr<TaskData> task;
  // Translation: pairs of the parallel corpus; micro-batches vary in size, so the tokens of a step
  // are counted (target tokens, as fairseq's wps).
  std::unique_ptr<TranslationData> translation;
};

RunData prepare_data(const Recipe& recipe);

// A run's metrics.jsonl, one JSON row per line with its "step". Continuing the log of a run at
// `step` first drops the rows past it (written after the checkpoint the run resumes from, by a
// process that was killed) and a torn last line, so the log reads as if the run had never stopped.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, int64_t step);
  // Drops the rows past `step` (a rollback to the checkpoint of that step).
  void rewind(int64_t step);
  void write(const nlohmann::json& row);

 private:
  std::ofstream out_;
  std::string path_;
};

// Installs SIGINT/SIGTERM handlers for its lifetime (restoring the old ones after): a long loop
// polls requested() and stops cleanly, with a checkpoint.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  bool requested() const;

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

// Fails unless `processes` is a multiple of train.tensor_parallel (the run's processes are
// tensor_parallel slices x data-parallel replicas).
void check_process_count(const TrainConfig& train, int processes);

}  // namespace loom
