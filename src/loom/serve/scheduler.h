// Continuous batching (Yu et al. 2022, "Orca"): one scheduler thread owns the Engine and, each
// iteration, admits waiting requests into free slots, then runs ONE engine.forward over every
// active slot — new prompts (prefill, in chunks of at most prefill_chunk tokens) and running
// requests' single decode tokens in the same call — samples each request's next token with its own
// Sampler, and hands the new text to whoever waits on the request. A request leaves its slot the
// step it finishes, so a new one can take it on the next step instead of waiting for a batch.
//
// Text: the scheduler detokenizes (SentencePiece drops a sequence's first leading space and byte
// tokens may end inside a UTF-8 character, so it decodes prompt and completion together and emits
// what is new, holding back an unfinished character and repairing ill-formed UTF-8, so every piece
// of text handed out is valid UTF-8) and matches stop strings, holding back any
// tail that could be the start of one, so streamed text never includes a stop string.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "loom/data/tokenizer.h"
#include "loom/infer/engine.h"
#include "loom/infer/sampler.h"

namespace loom {

struct SchedulerOptions {
  int64_t queue = 64;           // requests waiting for a slot at most; more are refused
  int64_t prefill_chunk = 256;  // prompt tokens one slot feeds per step at most (0 = all at once)
};

struct CompletionParams {
  std::vector<int64_t> prompt;  // token ids the model sees (non-empty)
  int64_t max_tokens = 16;      // new tokens at most (>= 1)
  SamplingOptions sampling;
  std::vector<std::string> stop;  // stop strings (not included in the text)
  int64_t stop_token = -1;        // the model's eos: ends the completion, not included (-1: none)
};

enum class FinishReason { none, stop, length, cancelled };
const char* finish_reason_name(FinishReason reason);  // "stop", "length", "cancelled"; none: ""

// One request's progress, shared by the scheduler (which writes) and the client (which waits).
class Completion {
 public:
  explicit Completion(CompletionParams params) : params_(std::move(params)) {}

  struct Update {
    std::string text;  // new text since the last update (may be empty)
    bool finished = false;
  };
  // Waits up to `timeout` for new text or the end, and takes the new text.
  Update wait(std::chrono::milliseconds timeout);
  // Waits for the end and returns the whole text (not taken by an earlier wait).
  std::string wait_all();
  // Asks the scheduler to drop the request (client gone); it frees its slot on its next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  const CompletionParams& params() const { return params_; }
  // Valid once finished.
  FinishReason finish_reason() const;
  int64_t completion_tokens() const;

 private:
  friend class Scheduler;
  void append(const std::string& text);
  void finish(FinishReason reason, int64_t tokens);

  const CompletionParams params_;
  std::atomic<bool> cancelled_{false};
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::string unread_;
  bool finished_ = false;
  FinishReason reason_ = FinishReason::none;
  int64_t tokens_ = 0;
};

// Counters for /metrics, read while the scheduler runs.
struct SchedulerStats {
  int64_t queued = 0;  // waiting for a slot now
  int64_t active = 0;  // holding a slot now
  int64_t slots = 0;
  int64_t prompt_tokens = 0;  // totals since start
  int64_t generated_tokens = 0;
  int64_t steps = 0;  // engine.forward calls
  int64_t finished = 0;
  int64_t cancelled = 0;
  double engine_seconds = 0;  // time inside engine.forward and sampling
  int64_t cache_bytes = 0;    // the engine's KV caches after the last step (Engine::cache_bytes)
};

class Scheduler {
 public:
  // The tokenizer decodes completions (and so must be the model's). Starts the thread.
  Scheduler(std::unique_ptr<Engine> engine, Tokenizer tokenizer, SchedulerOptions options);
  ~Scheduler();  // stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. Returns null when the queue is full (or the scheduler stopped). Invalid
  // parameters (empty prompt, prompt + max_tokens beyond the context, bad token ids or sampling
  // options) are loom::Errors.
  std::shared_ptr<Completion> submit(CompletionParams params);
  // Pausing holds every request where it is (queued or in its slot) until resumed: for
  // maintenance, and for tests that need a full queue.
  void pause(bool paused);
  // Finishes every request (queued and active) as cancelled and joins the thread. Idempotent.
  void stop();

  SchedulerStats stats() const;
  int64_t context() const { return context_; }
  int64_t vocab_size() const { return vocab_size_; }

 private:
  struct Active;
  void run();
  // One iteration: admit, one forward, sample and emit. Called without the lock.
  void step(std::vector<Active>& active, std::vector<int64_t>& free_slots);

  std::unique_ptr<Engine> engine_;
  Tokenizer tokenizer_;
  SchedulerOptions options_;
  int64_t context_, vocab_size_, slots_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Completion>> queue_;
  bool stopping_ = false;
  bool paused_ = false;
  SchedulerStats stats_;
  std::thread thread_;
};

}  // namespace loom
