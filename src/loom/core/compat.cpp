#include "loom/core/compat.h"

#include <ATen/autocast_mode.h>

namespace loom::compat {

CpuAutocast::CpuAutocast(bool enabled) : enabled_(enabled) {
  if (!enabled_) return;
#if LOOM_TORCH_AT_LEAST(2, 4)
  previous_enabled_ = at::autocast::is_autocast_enabled(at::kCPU);
  previous_dtype_ = at::autocast::get_autocast_dtype(at::kCPU);
  at::autocast::set_autocast_enabled(at::kCPU, true);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
#else
  previous_enabled_ = at::autocast::is_cpu_enabled();
  previous_dtype_ = at::autocast::get_autocast_cpu_dtype();
  at::autocast::set_cpu_enabled(true);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
#endif
  at::autocast::increment_nesting();
}

CpuAutocast::~CpuAutocast() {
  if (!enabled_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if LOOM_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(at::kCPU, previous_enabled_);
  at::autocast::set_autocast_dtype(at::kCPU, previous_dtype_);
#else
  at::autocast::set_cpu_enabled(previous_enabled_);
  at::autocast::set_autocast_cpu_dtype(previous_dtype_);
#endif
}

void zero_grad_to_none(const std::vector<torch::Tensor>& parameters) {
  for (const auto& p : parameters) {
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
  }
}

}  // namespace loom::compat
