// The one place that knows the difference between libtorch 1.13 (Debian 12) and 2.x
// (PyTorch wheels on the GPU machines). Gate on major/minor only: 1.13.1 reports patch 0.
#pragma once
#include <torch/torch.h>
#include <torch/version.h>

#define LOOM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace loom::compat {

// Turns CPU bf16 autocast on for the lifetime of the guard, as Python's
// `torch.autocast("cpu", dtype=torch.bfloat16)` does: flag, dtype, nesting, cache clearing.
class CpuAutocast {
 public:
  explicit CpuAutocast(bool enabled);
  ~CpuAutocast();
  CpuAutocast(const CpuAutocast&) = delete;
  CpuAutocast& operator=(const CpuAutocast&) = delete;

 private:
  bool enabled_;
  bool previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kBFloat16;
};

// Sets every gradient to undefined (None), the cheapest reset on both versions.
void zero_grad_to_none(const std::vector<torch::Tensor>& parameters);

}  // namespace loom::compat
