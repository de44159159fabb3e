// AdamW (Loshchilov & Hutter 2019): Adam with weight decay decoupled from the gradient, the
// same update as torch.optim.AdamW. Written here (it is arithmetic, not autodiff) so that its
// state has names and saves to safetensors for exact resume. Updates use libtorch's multi-tensor
// (_foreach) kernels, one call per group and operation.
#pragma once
#include <string>
#include <vector>

#include <torch/torch.h>

namespace loom {

struct NamedParameter {
  std::string name;
  torch::Tensor tensor;
};

struct AdamWGroup {
  std::vector<NamedParameter> params;
  double weight_decay = 0.0;
};

class AdamW {
 public:
  AdamW(std::vector<AdamWGroup> groups, double beta1, double beta2, double eps);

  // One update with learning rate lr from the gradients in .grad(); parameters without a
  // gradient are skipped.
  void step(double lr);
  int64_t step_count() const { return step_; }

  // State as named tensors ("<param>.exp_avg", "<param>.exp_avg_sq") and the step count.
  std::vector<std::pair<std::string, torch::Tensor>> state() const;
  // Restores state(); every tensor must be present with the parameter's shape.
  void load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, int64_t step,
                  const std::string& source);

 private:
  struct Group {
    std::vector<NamedParameter> params;
    std::vector<torch::Tensor> exp_avg, exp_avg_sq;
    double weight_decay;
  };
  std::vector<Group> groups_;
  double beta1_, beta2_, eps_;
  int64_t step_ = 0;
};

// Linear warm-up to `lr` over warmup_steps, then cosine decay to lr * min_lr_ratio at `steps`.
double cosine_lr(int64_t step, int64_t steps, int64_t warmup_steps, double lr, double min_lr_ratio);
// fairseq's inverse_sqrt: linear warm-up to `lr` over warmup_steps, then lr * sqrt(warmup_steps / s)
// at update s = step + 1 (Vaswani et al. 2017's schedule with the peak given directly).
double inverse_sqrt_lr(int64_t step, int64_t warmup_steps, double lr);

// Restores the optimizer's moments and step from a checkpoint directory's optimizer.safetensors
// (written by save_checkpoint, checkpoint/checkpoint.h).
void load_optimizer_state(const std::string& dir, AdamW& optimizer);

}  // namespace loom
