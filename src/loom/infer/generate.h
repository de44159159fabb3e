// Autoregressive generation from a decoder LM: one prefill pass over the prompt, then one token
// per step reusing the KV cache (or, for testing, recomputing the whole sequence each step).
#pragma once
#include <functional>
#include <vector>

#include "loom/infer/engine.h"
#include "loom/infer/sampler.h"
#include "loom/models/model.h"

namespace loom {

struct GenerateOptions {
  int64_t max_new_tokens = 200;
  SamplingOptions sampling;
  int64_t stop_token = -1;  // stop after emitting this id (-1: never)
  bool use_cache = true;
};

// Returns the new tokens (not the prompt). Stops at max_new_tokens, the stop token, or the
// model's context. `on_token` sees each new token as it is chosen (for streaming).
// An empty prompt or one longer than the context is an error.
std::vector<int64_t> generate(Model& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token = {});

// The same through an engine (infer/engine.h), in `slot`, which is reset first (use_cache is
// ignored: an engine always caches). Stops at the engine's context.
std::vector<int64_t> generate(Engine& engine, int64_t slot, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token = {});

}  // namespace loom
