// Sliding-window attention (Beltagy et al. 2020, Longformer; Mistral 7B): softmax attention
// (attention.h) in which each query sees only the last model.window positions, its own included;
// in encoders, the positions less than `window` away on either side.
#include "loom/nn/attention/local_attention.h"

#include "loom/core/error.h"
#include "loom/nn/attention/attention.h"

namespace loom {

void LocalAttentionOptions::validate(const std::string& source) const {
  if (window <= 0) fail("{}: model.window must be positive, got {}", source, window);
}

void register_local_attention(Registry<MixerFactory>& r) {
  r.add(BlockInfo("local_attention",
                  "sliding-window attention: each query sees the last model.window positions (encoders: within "
                  "window-1 either side)",
                  "Beltagy et al. 2020, Longformer; Jiang et al. 2023, Mistral 7B")
            .with_traits({"causal", "bidirectional", "qk", "scores", "tensor_parallel"})
            .with_options<LocalAttentionOptions>()
            .fast_engine(true),
        [](const ModelConfig& c, int64_t) { return std::make_shared<AttentionImpl>(c, c.local_attention.window); });
}

}  // namespace loom
