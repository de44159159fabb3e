// The inner loop of training, shared by the trainer and the benchmarks: grad_accum micro-batches
// of forward and backward (optionally under bf16 autocast), global-norm clipping, one AdamW
// update with the scheduled learning rate.
#pragma once
#include <functional>
#include <utility>

#include "loom/models/decoder_lm.h"
#include "loom/train/adamw.h"
#include "loom/train/recipe.h"

namespace loom {

using Batch = std::pair<torch::Tensor, torch::Tensor>;  // inputs, targets: [B, T] int64

struct StepResult {
  double loss = 0;       // mean over the step's micro-batches
  double grad_norm = 0;  // before clipping
  double lr = 0;
  double log_z = 0;      // mean log-partition of the output softmax (z-loss watches it)
  double max_attention_logit = std::nan("");  // with track_stats: the last micro-batch's
};

// Mean next-token cross-entropy: logits [B, T, V] (any float dtype), targets [B, T].
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);

class TrainStep {
 public:
  TrainStep(DecoderLM model, TrainConfig config);
  // Runs optimizer step `step` (0-based); `batch(micro)` supplies each micro-batch.
  // track_stats also records the largest attention logit (a small extra reduction per layer).
  StepResult run(int64_t step, const std::function<Batch(int64_t micro)>& batch, bool track_stats = false);
  AdamW& optimizer() { return optimizer_; }

 private:
  DecoderLM model_;
  TrainConfig config_;
  std::vector<torch::Tensor> parameters_;
  AdamW optimizer_;
};

// Mean loss per token of `model` over `batches` (no gradients, eval mode restored after).
double evaluate_loss(DecoderLM& model, const std::vector<Batch>& batches, bool bf16);

}  // namespace loom
