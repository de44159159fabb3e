#include "loom/serve/scheduler.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "loom/core/error.h"
#include "loom/core/log.h"
#include "loom/core/utf8.h"

namespace loom {

namespace {

// U+FFFD, what SentencePiece decodes the byte tokens of an unfinished UTF-8 character to.
bool ends_unfinished(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

// The longest tail of `text` that is a proper prefix of some stop string: it may become a stop
// string with the next token, so it is held back from the client until that is decided.
size_t stop_prefix_tail(const std::string& text, const std::vector<std::string>& stops) {
  size_t longest = 0;
  for (const auto& stop : stops)
    for (size_t k = std::min(stop.size() - 1, text.size()); k > longest; --k)
      if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
        longest = k;
        break;
      }
  return longest;
}

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::none: break;
  }
  return "";
}

Completion::Update Completion::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return finished_ || !unread_.empty(); });
  Update update{std::move(unread_), finished_};
  unread_.clear();
  return update;
}

std::string Completion::wait_all() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return finished_; });
  return std::move(unread_);
}

FinishReason Completion::finish_reason() const {
  std::lock_guard lock(mutex_);
  return reason_;
}

int64_t Completion::completion_tokens() const {
  std::lock_guard lock(mutex_);
  return tokens_;
}

void Completion::append(const std::string& text) {
  if (text.empty()) return;
  {
    std::lock_guard lock(mutex_);
    unread_ += text;
  }
  changed_.notify_all();
}

void Completion::finish(FinishReason reason, int64_t tokens) {
  {
    std::lock_guard lock(mutex_);
    if (finished_) return;
    finished_ = true;
    reason_ = reason;
    tokens_ = tokens;
  }
  changed_.notify_all();
}

// A request in a slot.
struct Scheduler::Active {
  Active(std::shared_ptr<Completion> r, int64_t s)
      : request(std::move(r)), slot(s), sampler(request->params().sampling) {}

  std::shared_ptr<Completion> request;
  int64_t slot = 0;
  Sampler sampler;
  int64_t fed = 0;         // prompt tokens fed to the engine so far
  int64_t next = -1;       // the sampled token to feed on the next step
  int64_t generated = 0;   // tokens sampled (eos included)
  std::vector<int> ids;    // prompt and completion without eos: what is decoded
  size_t prompt_text = 0;  // bytes of the prompt's own decoding
  std::string text;        // the completion's text so far (whole characters)
  size_t emitted = 0;      // bytes of `text` handed to the client
  FinishReason done = FinishReason::none;
};

Scheduler::Scheduler(std::unique_ptr<Engine> engine, Tokenizer tokenizer, SchedulerOptions options)
    : engine_(std::move(engine)), tokenizer_(std::move(tokenizer)), options_(options) {
  if (options_.queue < 0) fail("the request queue must hold >= 0 requests, got {}", options_.queue);
  if (options_.prefill_chunk < 0) fail("the prefill chunk must be >= 0 tokens, got {}", options_.prefill_chunk);
  context_ = engine_->context();
  vocab_size_ = engine_->vocab_size();
  slots_ = engine_->slots();
  stats_.slots = slots_;
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { stop(); }

std::shared_ptr<Completion> Scheduler::submit(CompletionParams params) {
  const auto prompt = static_cast<int64_t>(params.prompt.size());
  if (prompt == 0) fail("the prompt is empty");
  for (auto id : params.prompt)
    if (id < 0 || id >= vocab_size_) fail("token id {} is outside the vocabulary [0, {})", id, vocab_size_);
  if (params.max_tokens < 1) fail("max_tokens must be >= 1, got {}", params.max_tokens);
  if (prompt + params.max_tokens > context_)
    fail("the prompt is {} tokens and max_tokens is {}, together more than the model's context of {} tokens", prompt,
         params.max_tokens, context_);
  for (const auto& stop : params.stop)
    if (stop.empty()) fail("stop strings must not be empty");
  Sampler check(params.sampling);  // its constructor validates temperature, top_k, top_p
  auto request = std::make_shared<Completion>(std::move(params));
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || static_cast<int64_t>(queue_.size()) >= options_.queue) return nullptr;
    queue_.push_back(request);
    stats_.queued = static_cast<int64_t>(queue_.size());
  }
  wake_.notify_all();
  return request;
}

void Scheduler::pause(bool paused) {
  {
    std::lock_guard lock(mutex_);
    paused_ = paused;
  }
  wake_.notify_all();
}

void Scheduler::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Scheduler::run() {
  std::vector<Active> active;
  std::vector<int64_t> free_slots;
  for (int64_t s = slots_ - 1; s >= 0; --s) free_slots.push_back(s);
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || (!paused_ && (!queue_.empty() || !active.empty())); });
      if (stopping_) break;
      while (!free_slots.empty() && !queue_.empty()) {
        auto request = std::move(queue_.front());
        queue_.pop_front();
        if (request->cancelled()) {
          request->finish(FinishReason::cancelled, 0);
          ++stats_.cancelled;
          continue;
        }
        Active a(request, free_slots.back());
        free_slots.pop_back();
        const auto& p = request->params();
        for (auto id : p.prompt)
          if (id != p.stop_token) a.ids.push_back(static_cast<int>(id));
        a.prompt_text = tokenizer_.decode(a.ids).size();
        stats_.prompt_tokens += static_cast<int64_t>(p.prompt.size());
        active.push_back(std::move(a));
      }
      stats_.queued = static_cast<int64_t>(queue_.size());
      stats_.active = static_cast<int64_t>(active.size());
    }
    step(active, free_slots);
  }
  // Stopping: nobody will be served any more.
  std::lock_guard lock(mutex_);
  for (auto& a : active) a.request->finish(FinishReason::cancelled, a.generated);
  for (auto& request : queue_) request->finish(FinishReason::cancelled, 0);
  stats_.cancelled += static_cast<int64_t>(active.size() + queue_.size());
  queue_.clear();
  stats_.queued = stats_.active = 0;
}

void Scheduler::step(std::vector<Active>& active, std::vector<int64_t>& free_slots) {
  for (auto& a : active)
    if (a.request->cancelled()) a.done = FinishReason::cancelled;

  // One forward over every slot: a chunk of prompt for those still in prefill, the last sampled
  // token for the others.
  std::vector<int64_t> slots, fed_now;
  std::vector<std::vector<int64_t>> tokens;
  std::vector<Active*> stepped;
  for (auto& a : active) {
    if (a.done != FinishReason::none) continue;
    const auto& prompt = a.request->params().prompt;
    const auto left = static_cast<int64_t>(prompt.size()) - a.fed;
    if (left > 0) {
      const int64_t n = options_.prefill_chunk > 0 ? std::min(left, options_.prefill_chunk) : left;
      tokens.emplace_back(prompt.begin() + a.fed, prompt.begin() + a.fed + n);
      fed_now.push_back(n);
    } else {
      tokens.push_back({a.next});
      fed_now.push_back(0);
    }
    slots.push_back(a.slot);
    stepped.push_back(&a);
  }
  int64_t sampled = 0;
  const auto start = std::chrono::steady_clock::now();
  if (!slots.empty()) {
    torch::Tensor logits;
    try {
      logits = engine_->forward(slots, tokens);  // [n, V]
    } catch (const std::exception& e) {
      // submit() validated everything the engine checks, so this is a bug or resource failure:
      // end these requests rather than retry the same step forever.
      logger().error("serve: engine forward failed, ending {} requests: {}", slots.size(), e.what());
      for (auto* a : stepped) a->done = FinishReason::cancelled;
    }
    for (size_t i = 0; logits.defined() && i < stepped.size(); ++i) {
      Active& a = *stepped[i];
      const auto& p = a.request->params();
      a.fed += fed_now[i];
      if (a.fed < static_cast<int64_t>(p.prompt.size())) continue;  // still in prefill
      a.next = a.sampler(logits[static_cast<int64_t>(i)]);
      ++a.generated;
      ++sampled;
      const bool eos = a.next == p.stop_token;
      if (!eos) a.ids.push_back(static_cast<int>(a.next));
      if (eos) a.done = FinishReason::stop;
      else if (a.generated >= p.max_tokens || engine_->length(a.slot) >= context_) a.done = FinishReason::length;
      const bool final = a.done != FinishReason::none;

      // A byte-level BPE token can end inside a UTF-8 character, and a sampled sequence of byte
      // tokens need not be UTF-8 at all: an unfinished character is held back until the next token
      // decides it, and what is ill-formed is repaired (U+FFFD), so the text is always valid.
      const std::string full = tokenizer_.decode(a.ids);
      if (full.size() > a.prompt_text && (final || !ends_unfinished(full))) {
        const std::string_view raw = std::string_view(full).substr(a.prompt_text);
        a.text = utf8_repair(final ? raw : raw.substr(0, utf8_complete_prefix(raw)));
      }
      size_t end = a.text.size();  // emit text[emitted, end)
      size_t first_stop = std::string::npos;
      for (const auto& stop : p.stop) first_stop = std::min(first_stop, a.text.find(stop));
      if (first_stop != std::string::npos) {
        end = first_stop;
        a.done = FinishReason::stop;
      } else if (!final) {
        end -= stop_prefix_tail(a.text, p.stop);
      }
      if (end > a.emitted) {
        a.request->append(a.text.substr(a.emitted, end - a.emitted));
        a.emitted = end;
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Finished requests leave their slots now, so the next iteration can admit others there. The
  // counters are updated before anyone waiting on a request is told it finished.
  std::vector<Active> done;
  for (auto& a : active)
    if (a.done != FinishReason::none) {
      engine_->reset(a.slot);
      free_slots.push_back(a.slot);
      done.push_back(std::move(a));
    }
  active.erase(
      std::remove_if(active.begin(), active.end(), [](const Active& a) { return a.done != FinishReason::none; }),
      active.end());
  {
    std::lock_guard lock(mutex_);
    if (!slots.empty()) ++stats_.steps;
    stats_.generated_tokens += sampled;
    stats_.engine_seconds += seconds;
    for (const auto& a : done) ++(a.done == FinishReason::cancelled ? stats_.cancelled : stats_.finished);
    stats_.active = static_cast<int64_t>(active.size());
    stats_.cache_bytes = engine_->cache_bytes();
  }
  for (auto& a : done) a.request->finish(a.done, a.generated);
}

}  // namespace loom
