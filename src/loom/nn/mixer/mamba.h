// The options of `mamba` (the selective state-space mixer, mamba.cpp): recipe keys under model.,
// registered with the block. Torch-free: ModelConfig (nn/config.h) holds it.
#pragma once
#include <cstdint>
#include <string>

namespace loom {

struct MambaOptions {
  int64_t d_state = 16;
  int64_t d_conv = 4;
  int64_t expand = 2;   // d_inner = expand * d_model
  int64_t dt_rank = 0;  // 0 = ceil(d_model / 16)

  template <class V>
  void visit(V& v) {
    v("d_state", d_state, "Mamba state size per channel (mixer: mamba)");
    v("d_conv", d_conv, "Mamba causal convolution width (mixer: mamba)");
    v("expand", expand, "Mamba inner width = expand * d_model (mixer: mamba)");
    v("dt_rank", dt_rank, "Mamba rank of the step-size projection; 0 = ceil(d_model / 16)");
  }
  void validate(const std::string& source) const;
};

}  // namespace loom
