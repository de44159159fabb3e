// Autoregressive generation from a decoder LM: one prefill pass over the prompt, then one token
// per step reusing the KV cache (or, for testing, recomputing the whole sequence each step).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "loom/checkpoint/checkpoint.h"

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
std::vector<int64_t> generate(Model& model, const std::vector<int64_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token = {});

// The same through an engine (infer/engine.h), in `slot`, which is reset first (use_cache is
// ignored: an engine always caches). Stops at the engine's context.
std::vector<int64_t> generate(Engine& engine, int64_t slot, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options, const std::function<void(int64_t)>& on_token = {});

// Text in, text out, as `loom generate` does it: `prompt` after the model's start convention
// (Tokenizer::prompt_prefix) continued on the engine make_engine picks, until options.stop_token
// (the tokenizer's eos_id() stops at the paragraph's end; the stop token is not printed),
// max_new_tokens or the context. Returns the prompt and its continuation decoded together;
// `on_text` sees the prompt's text, then each new piece as soon as its characters are whole.
std::string generate_text(const LoadedModel& loaded, const std::string& prompt, const GenerateOptions& options,
                          const std::function<void(const std::string&)>& on_text = {});

}  // namespace loom
