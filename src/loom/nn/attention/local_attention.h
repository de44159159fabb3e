// The options of `local_attention` (sliding-window attention, local_attention.cpp): recipe keys
// under model., registered with the block. Torch-free: ModelConfig (nn/config.h) holds it.
#pragma once
#include <cstdint>
#include <string>

namespace loom {

struct LocalAttentionOptions {
  int64_t window = 64;  // positions each query sees, its own included

  template <class V>
  void visit(V& v) {
    v("window", window, "sliding-window size of local_attention (the query's own position included)");
  }
  void validate(const std::string& source) const;
};

}  // namespace loom
