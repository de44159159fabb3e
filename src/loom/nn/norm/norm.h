// Normalization layers over the last dimension: [..., dim] -> [..., dim].
#pragma once
#include <functional>
#include <memory>

#include <torch/torch.h>

#include "loom/core/registry.h"
#include "loom/nn/config.h"
#include "loom/nn/module.h"

namespace loom {

class NormImpl : public BlockModule {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
};

using NormFactory = std::function<std::shared_ptr<NormImpl>(const ModelConfig&, int64_t dim)>;

}  // namespace loom
