// Tensor parallelism (Shoeybi et al. 2019, Megatron-LM): each of T ranks holds a slice of every
// attention layer's heads, of every feed-forward block's hidden units and of the vocabulary; one
// all-reduce joins the slices after each sublayer. A block built with ModelConfig::tp_size > 1
// holds its slice, declares how each of its parameters is cut (BlockModule::declare_shard) and
// leaves the joining to the layer, which calls these operations (implemented over c10d by the
// train layer, train/tensor_parallel.h).
#pragma once
#include <torch/torch.h>

namespace loom {

class TensorParallelOps {
 public:
  virtual ~TensorParallelOps() = default;
  // Megatron's f, where a slice's input enters: identity forward; backward, the gradient summed
  // over the ranks (each rank's slice contributes to the input's gradient).
  virtual torch::Tensor enter(const torch::Tensor& x) = 0;
  // Megatron's g, where the slices' outputs join: their sum forward; identity backward.
  virtual torch::Tensor join(const torch::Tensor& x) = 0;
  // Plain (no autograd) in-place reductions over the ranks of the tensor-parallel group.
  virtual void sum(torch::Tensor& x) = 0;
  virtual void max(torch::Tensor& x) = 0;
};

}  // namespace loom
