#include "loom/core/registry.h"

namespace loom {

std::vector<BlockInfo>& block_catalogue() {
  static std::vector<BlockInfo> catalogue;
  return catalogue;
}

}  // namespace loom
