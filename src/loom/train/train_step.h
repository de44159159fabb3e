// The inner loop of training, shared by the trainer and the benchmarks: grad_accum micro-batches
// of forward and backward (optionally under bf16 autocast), global-norm clipping, one AdamW
// update with the scheduled learning rate.
#pragma once
#include <functional>
#include <utility>

#include "loom/checkpoint/recipe.h"
#include "loom/dist/dist.h"
#include "loom/models/model.h"
#include "loom/train/adamw.h"
#include "loom/train/gradient_buckets.h"
#include "loom/train/linear_cross_entropy.h"

namespace loom {

class CommunicatorOps;  // train/tensor_parallel.h

// inputs [B, T] int64 and targets: [B, T] next tokens (-1 = not scored) for decoders, [B] class
// labels for encoders (whose inputs use token 0 as padding). Encoder-decoders also take the source
// [B, S] (-1 = padding); their inputs are the target prefixes (-1 = padding).
struct Batch {
  Batch() = default;
  Batch(torch::Tensor inputs_, torch::Tensor targets_, torch::Tensor source_ = {})
      : inputs(std::move(inputs_)), targets(std::move(targets_)), source(std::move(source_)) {}
  Batch(std::pair<torch::Tensor, torch::Tensor> pair)  // NOLINT: LM and task batchers return pairs
      : inputs(std::move(pair.first)), targets(std::move(pair.second)) {}
  torch::Tensor inputs, targets, source;
};
inline std::vector<Batch> to_batches(std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs) {
  return {std::make_move_iterator(pairs.begin()), std::make_move_iterator(pairs.end())};
}

struct StepResult {
  double loss = 0;       // mean over the step's micro-batches
  double grad_norm = 0;  // before clipping
  double lr = 0;
  double log_z = 0;                           // mean log-partition of the output softmax (z-loss watches it)
  double max_attention_logit = std::nan("");  // with track_stats: over all the step's micro-batches
  int64_t scored = 0;                         // targets scored in the step (all ranks)
};

// Rank `rank` of `world`'s rows of a batch: rows [B r / world, B (r + 1) / world).
Batch shard_rows(const Batch& batch, int rank, int world);

// Mean next-token cross-entropy: logits [B, T, V] (any float dtype), targets [B, T].
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);

class TrainStep {
 public:
  TrainStep(Model model, TrainConfig config);
  // Runs optimizer step `step` (0-based); `batch(micro)` supplies each micro-batch.
  // track_stats also records the largest attention logit (a small extra reduction per layer).
  StepResult run(int64_t step, const std::function<Batch(int64_t micro)>& batch, bool track_stats = false);
  AdamW& optimizer() { return optimizer_; }
  // Multiplies the scheduled learning rate from now on (divergence rollbacks lower it).
  void set_lr_scale(double scale) { lr_scale_ = scale; }
  // Data parallel over `dist`'s ranks (nullptr: one process). `batch(micro)` still returns the
  // whole micro-batch, the same on every rank: when the ranks divide grad_accum, each runs its
  // share of the micro-batches (micro % world == rank); otherwise each runs its rows of every
  // micro-batch. Each rank's loss is weighted by its share of the scored targets and the
  // gradients are summed over the ranks, so the update equals one process's on the whole step.
  // The gradients are summed in buckets of at most bucket_bytes, each started as soon as the
  // last backward of the step has filled it (train/gradient_buckets.h).
  void set_communicator(Communicator* dist, int64_t bucket_bytes = int64_t{25} << 20);
  // Buckets the last step started during backward, and how many there are (0 in one process).
  int64_t buckets_started_during_backward() const { return buckets_ ? buckets_->started_during_backward() : 0; }
  int64_t bucket_count() const { return buckets_ ? buckets_->count() : 0; }
  ~TrainStep();

 private:
  Model model_;
  TrainConfig config_;
  Communicator* dist_ = nullptr;
  std::unique_ptr<GradientBuckets> buckets_;
  void all_reduce_gradients(StepResult& result);
  // Tensor parallel (a model built with tp_size > 1): its ranks, which parameters are sliced and
  // which have partial gradients (indices into parameters_).
  CommunicatorOps* tensor_parallel_ = nullptr;
  std::vector<bool> sliced_;
  std::vector<size_t> partial_;
  void sum_partial_gradients();
  double clip_sliced_gradients(double max_norm);
  double lr_scale_ = 1;
  std::vector<torch::Tensor> parameters_;
  AdamW optimizer_;
};

// The training loss of one batch: mean cross-entropy over the scored targets (the fused output
// projection for decoders, the classification head for encoders), plus z_loss * mean(log Z^2);
// `stats` receives the cross-entropy and mean log Z.
// label_smoothing: see linear_cross_entropy (decoders and encoder-decoders).
torch::Tensor batch_loss(Model& model, const Batch& batch, bool bf16, double z_loss = 0.0, LossStats* stats = nullptr,
                         double label_smoothing = 0.0);

// Mean loss per scored target of `model` over `batches` (no gradients, eval mode restored after).
double evaluate_loss(Model& model, const std::vector<Batch>& batches, bool bf16);

// Held-out scores of a workbench task. Sequence tasks: token accuracy over scored targets and
// exact match (an example counts when every one of its scored targets is the argmax; with
// teacher forcing that equals greedy decoding). Classification: accuracy (= exact match).
struct TaskScore {
  double loss = 0;
  double token_accuracy = 0;
  double exact_match = 0;
  int64_t examples = 0;
  int64_t exact = 0;  // examples exactly right
};
TaskScore evaluate_task(Model& model, const std::vector<Batch>& batches, bool bf16);

}  // namespace loom
