// Data-parallel gradient all-reduce overlapped with backward, as DDP's reducer does it: the
// parameters are grouped, in reverse order of registration (about the order backward reaches
// them), into buckets of one dtype and at most bucket_bytes. During the step's last backward on
// this rank a hook on each parameter copies its accumulated gradient into its bucket's flat
// buffer, and a bucket whose gradients are all in starts its all-reduce while backward goes on.
// Buckets start strictly in index order on every rank (Gloo matches collectives by their order);
// the ones still waiting when backward ends (a parameter this rank did not reach, a rank with no
// rows in the last micro-batch) start then.
#pragma once
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "loom/dist/dist.h"

namespace loom {

class GradientBuckets {
 public:
  GradientBuckets(const std::vector<torch::Tensor>& parameters, Communicator& dist, int64_t bucket_bytes);
  ~GradientBuckets();  // removes the hooks
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // The next backward is the step's last on this rank: its gradients go to the buckets as they come.
  void arm();
  // Ends the step: starts the buckets that have not started, waits for all of them and gives
  // every parameter the sum of the ranks' gradients (zeros where no rank had one). Returns, per
  // parameter, whether this rank had a gradient for it.
  std::vector<bool> finish();
  // Buckets the last step started during backward, and how many there are.
  int64_t started_during_backward() const;
  int64_t count() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
  std::vector<torch::Tensor> parameters_;
  std::vector<unsigned> hooks_;
};

}  // namespace loom
