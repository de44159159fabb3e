#include "loom/nn/blocks.h"

namespace loom {

// One registration function per block file (nn/<family>/<block>.cpp), called below in the order
// `loom blocks` lists them.
void register_attention(Registry<MixerFactory>&);
void register_local_attention(Registry<MixerFactory>&);
void register_linear_attention(Registry<MixerFactory>&);
void register_mamba(Registry<MixerFactory>&);
void register_fnet(Registry<MixerFactory>&);
void register_learned(Registry<PositionFactory>&);
void register_sinusoidal(Registry<PositionFactory>&);
void register_rope(Registry<PositionFactory>&);
void register_alibi(Registry<PositionFactory>&);
void register_none(Registry<PositionFactory>&);
void register_layernorm(Registry<NormFactory>&);
void register_rmsnorm(Registry<NormFactory>&);
void register_dyt(Registry<NormFactory>&);
void register_mlp(Registry<FfnFactory>&);
void register_glu(Registry<FfnFactory>&);
void register_moe(Registry<FfnFactory>&);

const BlockRegistries& blocks() {
  static const BlockRegistries registries = [] {
    BlockRegistries r;
    register_attention(r.mixers);
    register_local_attention(r.mixers);
    register_mamba(r.mixers);
    register_linear_attention(r.mixers);
    register_fnet(r.mixers);
    register_learned(r.positions);
    register_sinusoidal(r.positions);
    register_rope(r.positions);
    register_alibi(r.positions);
    register_none(r.positions);
    register_layernorm(r.norms);
    register_rmsnorm(r.norms);
    register_dyt(r.norms);
    register_mlp(r.ffns);
    register_glu(r.ffns);
    register_moe(r.ffns);
    return r;
  }();
  return registries;
}

const BlockInfo& block_info(const std::string& family, const std::string& name, const std::string& where) {
  const auto& r = blocks();
  if (family == "mixer") return r.mixers.info(name, where);
  if (family == "position") return r.positions.info(name, where);
  if (family == "norm") return r.norms.info(name, where);
  if (family == "ffn") return r.ffns.info(name, where);
  fail("{}: unknown block family '{}'", where, family);
}

}  // namespace loom
