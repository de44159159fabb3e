// An inference engine for decoder language models: a fixed set of sequence slots, each with its
// own KV cache, advanced together. One call runs new tokens of several slots through the model at
// once (a prompt's prefill and other slots' single decode tokens may share a call), which is what
// the server's continuous batching and the decode benchmark need.
//
// Two implementations share this interface:
//   reference: the Model's own forward with one KVCache per slot (any decoder recipe);
//   fast:      LLaMA/GPT-style decoders with fp32, int8 or 4-bit weights, hand-written matrix-vector
//              kernels at decode and a decode step that allocates nothing (infer/fast_engine.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "loom/models/model.h"

namespace loom {

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const char* name() const = 0;  // "reference" or "fast"
  virtual int64_t vocab_size() const = 0;
  virtual int64_t context() const = 0;  // positions each slot holds
  virtual int64_t slots() const = 0;    // sequences held at once

  // Appends tokens[i] (non-empty) to slot slots[i]'s sequence (slots distinct, each in
  // [0, slots())) and returns the logits after each slot's last new token: [n, vocab_size] float,
  // row i for slots[i]. Token ids outside the vocabulary, or a slot whose length would pass
  // context(), are loom::Errors (nothing changes).
  virtual torch::Tensor forward(const std::vector<int64_t>& slots, const std::vector<std::vector<int64_t>>& tokens) = 0;
  // Tokens a slot holds.
  virtual int64_t length(int64_t slot) const = 0;
  // Empties a slot and frees its cache.
  virtual void reset(int64_t slot) = 0;
  // Bytes the slots' caches hold now. They grow with the sequences (cache_capacity), so an idle
  // engine holds none and a short sequence does not reserve the whole context.
  virtual int64_t cache_bytes() const = 0;
};

// The positions a slot's cache makes room for when it must hold `needed` and has `current`:
// `current` if that is enough, else at least double it, in multiples of 128, at most `context`.
inline int64_t cache_capacity(int64_t current, int64_t needed, int64_t context) {
  if (needed <= current) return current;
  constexpr int64_t kStep = 128;
  const int64_t doubled = std::max(2 * current, (needed + kStep - 1) / kStep * kStep);
  return std::min(context, std::max(needed, doubled));
}

struct EngineOptions {
  int64_t slots = 1;
  int64_t context = 0;  // 0 = the model's max_seq_len
};

// The reference engine over any decoder Model (not encoder or encoder_decoder: a loom::Error).
std::unique_ptr<Engine> make_reference_engine(Model model, const EngineOptions& options);

struct LoadedModel;  // checkpoint/checkpoint.h
// The engine a loaded checkpoint serves with: the fast engine when every block and option of its
// architecture is declared to run there (fast_engine_supports; its weights may be quantized),
// otherwise the reference engine. Logs (loom::logger(), info) which one it picked and, for the reference
// engine, the first block or option the fast engine does not run.
std::unique_ptr<Engine> make_engine(const LoadedModel& loaded, const EngineOptions& options);

}  // namespace loom
