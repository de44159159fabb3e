// Every block family's registry, filled once, explicitly, on first use.
#pragma once
#include "loom/nn/ffn/ffn.h"
#include "loom/nn/mixer.h"
#include "loom/nn/norm/norm.h"
#include "loom/nn/position/position.h"

namespace loom {

struct BlockRegistries {
  Registry<MixerFactory> mixers{"mixer"};
  Registry<PositionFactory> positions{"position"};
  Registry<NormFactory> norms{"norm"};
  Registry<FfnFactory> ffns{"ffn"};
};

const BlockRegistries& blocks();

// The registration of block `name` of `family` ("mixer", "position", "norm", "ffn"); an unknown one
// is a loom::Error naming `where`.
const BlockInfo& block_info(const std::string& family, const std::string& name, const std::string& where);

}  // namespace loom
