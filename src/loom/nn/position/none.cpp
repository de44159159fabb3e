// No position information (Haviv et al. 2022: causal language models learn positions without any,
// from the causal mask alone).
#include "loom/nn/position/position.h"

namespace loom {
namespace {

class NoPositionImpl : public PositionImpl {
 public:
  explicit NoPositionImpl(const ModelConfig&) {}
};

}  // namespace

void register_none(Registry<PositionFactory>& r) {
  r.add(BlockInfo("none", "no position information (decoders still infer order from causal masking)",
                  "Haviv et al. 2022, Transformer Language Models without Positional Encodings Still Learn "
                  "Positional Information")
            .fast_engine(true),
        [](const ModelConfig& c) { return std::make_shared<NoPositionImpl>(c); });
}

}  // namespace loom
