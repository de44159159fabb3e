#include "loom/nn/blocks.h"

namespace loom {

const BlockRegistries& blocks() {
  static const BlockRegistries registries = [] {
    BlockRegistries r;
    register_mixers(r.mixers);
    register_mamba(r.mixers);
    register_linear_attention(r.mixers);
    register_fnet(r.mixers);
    register_positions(r.positions);
    register_norms(r.norms);
    register_ffns(r.ffns);
    register_moe(r.ffns);
    return r;
  }();
  return registries;
}

}  // namespace loom
