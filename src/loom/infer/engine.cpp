// The reference engine: the Model's own forward with one batch-1 KVCache per slot, run slot by
// slot. Any decoder recipe works (attention, Mamba, linear attention, hybrids), because it is the
// very forward that training and generate() use; batching rows of different lengths into one
// call is the fast engine's job (infer/fast_engine.h).
// Shapes: T new tokens of one slot, V vocab_size.
#include "loom/infer/engine.h"

#include <set>

#include <spdlog/spdlog.h>

#include "loom/checkpoint/checkpoint.h"
#include "loom/core/error.h"
#include "loom/core/log.h"
#include "loom/infer/fast_engine.h"

namespace loom {

namespace {

class ReferenceEngine : public Engine {
 public:
  ReferenceEngine(Model model, const EngineOptions& options) : model_(std::move(model)) {
    const auto& config = model_->config();
    if (!config.causal() || config.encoder_decoder())
      fail("the inference engine runs decoder language models (model.arch decoder), not model.arch {}", config.arch);
    if (options.slots < 1) fail("an engine needs at least one slot, got {}", options.slots);
    if (options.context < 0) fail("the engine's context must be >= 0 (0 = the model's), got {}", options.context);
    if (options.context > config.max_seq_len)
      fail("the engine's context of {} tokens exceeds the model's max_seq_len of {}", options.context,
           config.max_seq_len);
    context_ = options.context > 0 ? options.context : config.max_seq_len;
    model_->eval();
    slots_.resize(static_cast<size_t>(options.slots));
  }

  const char* name() const override { return "reference"; }
  int64_t vocab_size() const override { return model_->config().vocab_size; }
  int64_t context() const override { return context_; }
  int64_t slots() const override { return static_cast<int64_t>(slots_.size()); }

  torch::Tensor forward(const std::vector<int64_t>& slots, const std::vector<std::vector<int64_t>>& tokens) override {
    // Check everything first, so that an error leaves every slot as it was.
    if (slots.size() != tokens.size()) fail("engine forward: {} slots but {} token lists", slots.size(), tokens.size());
    if (slots.empty()) fail("engine forward: no slots given");
    std::set<int64_t> seen;
    for (size_t i = 0; i < slots.size(); ++i) {
      check_slot(slots[i]);
      if (!seen.insert(slots[i]).second) fail("engine forward: slot {} appears twice", slots[i]);
      if (tokens[i].empty()) fail("engine forward: no tokens for slot {}", slots[i]);
      for (auto id : tokens[i])
        if (id < 0 || id >= vocab_size()) fail("token id {} is outside the vocabulary [0, {})", id, vocab_size());
      const int64_t after = slots_[static_cast<size_t>(slots[i])].length + static_cast<int64_t>(tokens[i].size());
      if (after > context_)
        fail("slot {} would hold {} tokens but the engine's context is {} tokens", slots[i], after, context_);
    }
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> rows;
    rows.reserve(slots.size());
    for (size_t i = 0; i < slots.size(); ++i) {
      Slot& slot = slots_[static_cast<size_t>(slots[i])];
      // The cache is made on a slot's first tokens and grows with the sequence.
      const int64_t needed = slot.length + static_cast<int64_t>(tokens[i].size());
      const int64_t capacity = cache_capacity(slot.cache.capacity, needed, context_);
      if (slot.cache.layers.empty()) slot.cache = model_->make_cache(1, capacity);
      else if (capacity > slot.cache.capacity) grow_cache(slot.cache, capacity, slot.length);
      auto input = torch::tensor(tokens[i]).unsqueeze(0);               // [1, T]
      auto logits = model_->forward(input, slot.length, &slot.cache);   // [1, T, V]
      rows.push_back(logits[0][logits.size(1) - 1].to(torch::kFloat));  // [V]
      slot.length += static_cast<int64_t>(tokens[i].size());
    }
    return torch::stack(rows);  // [n, V]
  }

  int64_t length(int64_t slot) const override {
    check_slot(slot);
    return slots_[static_cast<size_t>(slot)].length;
  }

  void reset(int64_t slot) override {
    check_slot(slot);
    Slot& s = slots_[static_cast<size_t>(slot)];
    s.length = 0;
    s.cache = {};
  }

  int64_t cache_bytes() const override {
    int64_t bytes = 0;
    for (const auto& slot : slots_)
      for (const auto& layer : slot.cache.layers)
        for (const auto* state : {&layer.mixer, &layer.cross})
          for (const auto& t : state->tensors)
            if (t.defined()) bytes += static_cast<int64_t>(t.nbytes());
    return bytes;
  }

 private:
  struct Slot {
    KVCache cache;
    int64_t length = 0;
  };

  void check_slot(int64_t slot) const {
    if (slot < 0 || slot >= slots()) fail("slot {} is outside [0, {})", slot, slots());
  }

  Model model_;
  int64_t context_ = 0;
  std::vector<Slot> slots_;
};

}  // namespace

std::unique_ptr<Engine> make_reference_engine(Model model, const EngineOptions& options) {
  return std::make_unique<ReferenceEngine>(std::move(model), options);
}

std::unique_ptr<Engine> make_engine(const LoadedModel& loaded, const EngineOptions& options) {
  std::string why;
  if (fast_engine_supports(loaded.model->config(), &why)) {
    logger().info("engine: fast, {} weights", loaded.quantization.empty() ? "fp32" : loaded.quantization);
    FastEngineOptions fast;
    fast.engine = options;
    return make_fast_engine(loaded.model, loaded.quantized, fast);
  }
  logger().info("engine: reference (the fast engine does not run {})", why);
  return make_reference_engine(loaded.model, options);
}

}  // namespace loom
