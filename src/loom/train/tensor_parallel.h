// Tensor-parallel training (Megatron-LM) over c10d: the operations that join a model's slices
// (nn/tensor_parallel.h) on a Communicator of the tensor-parallel group, the vocabulary-parallel
// cross-entropy, and the slicing of whole parameters into a rank's slices and back.
#pragma once
#include <map>
#include <string>

#include "loom/dist/dist.h"
#include "loom/models/model.h"
#include "loom/train/linear_cross_entropy.h"

namespace loom {

// Megatron's f and g over `group` (reductions in fp32, whatever the tensors' dtype).
class CommunicatorOps : public TensorParallelOps {
 public:
  explicit CommunicatorOps(Communicator& group) : group_(group) {}
  torch::Tensor enter(const torch::Tensor& x) override;
  torch::Tensor join(const torch::Tensor& x) override;
  void sum(torch::Tensor& x) override;
  void max(torch::Tensor& x) override;
  Communicator& group() { return group_; }
  // The group as an autograd function's saved integer.
  int64_t group_handle() const { return reinterpret_cast<int64_t>(&group_); }

 private:
  Communicator& group_;
};

// The mean cross-entropy of `hidden` [N, d_model] (rows to score) against `targets` [N] over
// the whole vocabulary, for a model whose output projection is sliced by vocabulary rows: each
// rank makes its slice's logits, and the softmax's maximum, normalizer and target logit are
// reduced over the ranks ([N] each), never the [N, V] logits. Plus z_loss * mean(log Z^2);
// `stats` as linear_cross_entropy's.
torch::Tensor vocab_parallel_cross_entropy(ModelImpl& model, const torch::Tensor& hidden, const torch::Tensor& targets,
                                           torch::ScalarType dtype, double z_loss, LossStats* stats);

// Rank `rank` of `ranks`' slice of a whole parameter cut as `shard` says.
torch::Tensor slice_parameter(const torch::Tensor& whole, const Shard& shard, int64_t rank, int64_t ranks);
// The whole parameter from every rank's slice (a sum over `group` of the slices placed in zeros).
torch::Tensor join_parameter(const torch::Tensor& slice, const Shard& shard, Communicator& group);

}  // namespace loom
