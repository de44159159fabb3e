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

}  // namespace loom
