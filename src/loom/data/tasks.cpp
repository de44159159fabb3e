#include "loom/data/tasks.h"

#include <algorithm>
#include <map>
#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "loom/core/error.h"
#include "loom/core/hash.h"

namespace loom {
namespace {

int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// k distinct values of 0 .. n-1, in increasing order.
std::vector<int64_t> distinct_sorted(std::mt19937_64& rng, int64_t n, int64_t k) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  for (int64_t i = 0; i < k; ++i) std::swap(all[i], all[uniform(rng, i, n - 1)]);
  all.resize(static_cast<size_t>(k));
  std::sort(all.begin(), all.end());
  return all;
}

std::string key_of(const Example& e) {
  std::string key(reinterpret_cast<const char*>(e.tokens.data()), e.tokens.size() * sizeof(int64_t));
  if (e.label >= 0) key += static_cast<char>(e.label);
  return key;
}

// Tokens: 0 pad, 1 noise, 2 marker, 3 .. 3+vocab-1 data. The sequence is seq_len noise tokens
// with n_tokens data tokens at random positions, then n_tokens markers; at marker k the model
// must output the k-th data token.
class SelectiveCopying : public Task {
 public:
  explicit SelectiveCopying(const TaskConfig& c) : seq_len_(c.seq_len), n_(c.n_tokens), vocab_(c.vocab) {}
  int64_t vocab_size() const override { return 3 + vocab_; }
  int64_t max_length() const override { return seq_len_ + n_; }
  Example sample(std::mt19937_64& rng) const override {
    Example e;
    e.tokens.assign(static_cast<size_t>(max_length()), 1);
    e.targets.assign(e.tokens.size(), -1);
    const auto positions = distinct_sorted(rng, seq_len_, n_);
    for (int64_t k = 0; k < n_; ++k) {
      const int64_t token = 3 + uniform(rng, 0, vocab_ - 1);
      e.tokens[positions[k]] = token;
      e.tokens[seq_len_ + k] = 2;
      e.targets[seq_len_ + k] = token;
    }
    return e;
  }
  std::string render(const std::vector<int64_t>& tokens) const override {
    std::string out;
    for (auto t : tokens) out += t == 0 ? "_" : t == 1 ? "." : t == 2 ? "?" : fmt::format("<{}>", t - 3);
    return out;
  }

 private:
  int64_t seq_len_, n_, vocab_;
};

// Tokens: 0 pad, 1 filler, keys 2 .. 2+vocab/2-1, values after them. The sequence is n pairs
// "k v" (distinct keys), then filler in which every key reappears once, in random order, followed
// by its value: at each re-appearing key the model must output the value.
class Mqar : public Task {
 public:
  explicit Mqar(const TaskConfig& c) : seq_len_(c.seq_len), n_(c.n_tokens), half_(c.vocab / 2) {}
  int64_t vocab_size() const override { return 2 + 2 * half_; }
  int64_t max_length() const override { return seq_len_; }
  Example sample(std::mt19937_64& rng) const override {
    Example e;
    e.tokens.assign(static_cast<size_t>(seq_len_), 1);
    e.targets.assign(e.tokens.size(), -1);
    auto keys = distinct_sorted(rng, half_, n_);
    std::shuffle(keys.begin(), keys.end(), rng);
    std::vector<int64_t> values(static_cast<size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) {
      values[i] = 2 + half_ + uniform(rng, 0, half_ - 1);
      e.tokens[2 * i] = 2 + keys[i];
      e.tokens[2 * i + 1] = values[i];
    }
    // Queries occupy n of the (seq_len - 2n) / 2 two-token slots after the pairs.
    const auto slots = distinct_sorted(rng, (seq_len_ - 2 * n_) / 2, n_);
    std::vector<int64_t> order(static_cast<size_t>(n_));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t q = 0; q < n_; ++q) {
      const int64_t at = 2 * n_ + 2 * slots[q], pair = order[q];
      e.tokens[at] = 2 + keys[pair];
      e.tokens[at + 1] = values[pair];
      e.targets[at] = values[pair];
    }
    return e;
  }
  std::string render(const std::vector<int64_t>& tokens) const override {
    std::string out;
    for (auto t : tokens)
      out += t == 0          ? "_ "
             : t == 1        ? ". "
             : t < 2 + half_ ? fmt::format("k{} ", t - 2)
                             : fmt::format("v{} ", t - 2 - half_);
    return out;
  }

 private:
  int64_t seq_len_, n_, half_;
};

// Tokens: 0 pad, 1 trigger, 2 .. 2+vocab-1 content. Random content with the trigger at a random
// position in the first half followed by a token b; the sequence ends with the trigger, where the
// model must output b.
class InductionHeads : public Task {
 public:
  explicit InductionHeads(const TaskConfig& c) : seq_len_(c.seq_len), vocab_(c.vocab) {}
  int64_t vocab_size() const override { return 2 + vocab_; }
  int64_t max_length() const override { return seq_len_; }
  Example sample(std::mt19937_64& rng) const override {
    Example e;
    e.tokens.resize(static_cast<size_t>(seq_len_));
    for (auto& t : e.tokens) t = 2 + uniform(rng, 0, vocab_ - 1);
    e.targets.assign(e.tokens.size(), -1);
    const int64_t at = uniform(rng, 0, seq_len_ / 2 - 2);
    e.tokens[at] = 1;
    e.tokens[seq_len_ - 1] = 1;
    e.targets[seq_len_ - 1] = e.tokens[at + 1];
    return e;
  }
  std::string render(const std::vector<int64_t>& tokens) const override {
    std::string out;
    for (auto t : tokens) out += t == 0 ? "_ " : t == 1 ? "* " : fmt::format("{} ", t - 2);
    return out;
  }

 private:
  int64_t seq_len_, vocab_;
};

// Character tokens: 0 pad, '0'-'9' 1-10, '+' 11, '=' 12, '$' 13, newline 14. One example per
// line, "a+b=c\n" or "$a+b=reverse(c)$\n", operands uniform in 0 .. 10^digits - 1 without
// leading zeros; every character after '=' (the newline included) is scored.
class Addition : public Task {
 public:
  explicit Addition(const TaskConfig& c) : digits_(c.digits), reversed_(c.format == "reversed") {}
  int64_t vocab_size() const override { return 15; }
  int64_t max_length() const override { return 2 * digits_ + (digits_ + 1) + 3 + (reversed_ ? 2 : 0); }
  Example sample(std::mt19937_64& rng) const override {
    int64_t limit = 1;
    for (int64_t i = 0; i < digits_; ++i) limit *= 10;
    const int64_t a = uniform(rng, 0, limit - 1), b = uniform(rng, 0, limit - 1);
    std::string answer = std::to_string(a + b);
    if (reversed_) std::reverse(answer.begin(), answer.end());
    const std::string question = fmt::format("{}{}+{}=", reversed_ ? "$" : "", a, b);
    const std::string text = question + answer + (reversed_ ? "$" : "") + "\n";
    Example e;
    for (char ch : text) e.tokens.push_back(id(ch));
    e.targets.assign(e.tokens.size(), -1);
    for (size_t i = question.size() - 1; i + 1 < text.size(); ++i) e.targets[i] = e.tokens[i + 1];
    return e;
  }
  std::string render(const std::vector<int64_t>& tokens) const override {
    static const char kChars[] = "_0123456789+=$\n";
    std::string out;
    for (auto t : tokens) out += t >= 0 && t < 15 ? kChars[t] : '?';
    return out;
  }

 private:
  static int64_t id(char ch) {
    if (ch >= '0' && ch <= '9') return 1 + (ch - '0');
    return ch == '+' ? 11 : ch == '=' ? 12 : ch == '$' ? 13 : 14;
  }
  int64_t digits_;
  bool reversed_;
};

// Tokens: 0 pad, digits 0-9 as 1-10, [MIN 11, [MAX 12, [MED 13, [SM 14, ] 15. Trees follow the
// LRA generator (lra_benchmarks/data/listops.py): below max_depth a node is an operator with
// probability 0.25 (else a digit), with 2 .. max_args arguments; MED is the integer part of the
// median, SM the sum mod 10. Expressions of min_length .. max_length tokens are kept (rejection
// sampling, as LRA does). The input is LRA's token sequence (its parentheses are not tokens).
class ListOps : public Task {
 public:
  explicit ListOps(const TaskConfig& c)
      : min_length_(c.min_length), max_length_(c.max_length), max_depth_(c.max_depth), max_args_(c.max_args) {}
  int64_t vocab_size() const override { return 16; }
  int64_t max_length() const override { return max_length_; }
  int64_t n_classes() const override { return 10; }
  Example sample(std::mt19937_64& rng) const override {
    for (;;) {
      Example e;
      const int64_t value = tree(rng, 1, e.tokens);
      const auto n = static_cast<int64_t>(e.tokens.size());
      if (value >= 0 && n >= min_length_ && n <= max_length_) {
        e.label = value;
        return e;
      }
    }
  }
  std::string render(const std::vector<int64_t>& tokens) const override {
    static const char* kNames[] = {"_", "0", "1", "2",    "3",    "4",    "5",   "6",
                                   "7", "8", "9", "[MIN", "[MAX", "[MED", "[SM", "]"};
    std::string out;
    for (auto t : tokens) out += (out.empty() ? "" : " ") + std::string(t >= 0 && t < 16 ? kNames[t] : "?");
    return out;
  }

 private:
  // Appends a subtree's tokens; returns its value, or -1 once the expression is too long (the
  // draw is abandoned).
  int64_t tree(std::mt19937_64& rng, int64_t depth, std::vector<int64_t>& out) const {
    if (static_cast<int64_t>(out.size()) > max_length_) return -1;
    const double r = depth < max_depth_ ? std::uniform_real_distribution<double>(0, 1)(rng) : 1.0;
    if (r > 0.25) {
      const int64_t digit = uniform(rng, 0, 9);
      out.push_back(1 + digit);
      return digit;
    }
    const int64_t n_args = uniform(rng, 2, max_args_);
    const int64_t op = uniform(rng, 0, 3);
    out.push_back(11 + op);
    std::vector<int64_t> args;
    for (int64_t i = 0; i < n_args; ++i) {
      const int64_t v = tree(rng, depth + 1, out);
      if (v < 0) return -1;
      args.push_back(v);
    }
    out.push_back(15);
    switch (op) {
      case 0: return *std::min_element(args.begin(), args.end());
      case 1: return *std::max_element(args.begin(), args.end());
      case 2: {
        std::sort(args.begin(), args.end());
        const size_t m = args.size() / 2;
        return args.size() % 2 ? args[m] : (args[m - 1] + args[m]) / 2;
      }
      default: return std::accumulate(args.begin(), args.end(), int64_t{0}) % 10;
    }
  }
  int64_t min_length_, max_length_, max_depth_, max_args_;
};

// The keys each task reads; any other task key must keep its default.
const std::map<std::string, std::vector<std::string>>& task_keys() {
  static const std::map<std::string, std::vector<std::string>> keys{
      {"lm", {}},
      {"translation", {"src", "tgt"}},
      {"selective_copying", {"seq_len", "n_tokens", "vocab"}},
      {"mqar", {"seq_len", "n_tokens", "vocab"}},
      {"induction_heads", {"seq_len", "vocab"}},
      {"addition", {"format", "digits"}},
      {"listops", {"min_length", "max_length", "max_depth", "max_args"}},
  };
  return keys;
}

struct Flatten {  // key -> value as text
  template <class T>
  void operator()(const char* key, const T& value, const char*) {
    values[key] = fmt::format("{}", value);
  }
  std::map<std::string, std::string> values;
};

}  // namespace

void TaskConfig::validate(const std::string& source) const {
  const auto& keys = task_keys();
  auto it = keys.find(name);
  if (it == keys.end()) {
    std::string valid;
    for (const auto& [k, v] : keys) valid += (valid.empty() ? "" : ", ") + k;
    fail("{}: unknown task.name '{}' (valid: {})", source, name, valid);
  }
  Flatten mine, defaults;
  TaskConfig copy = *this;
  copy.visit(mine);
  TaskConfig().visit(defaults);
  const std::vector<std::string> common{"name", "train_examples", "valid_examples", "test_examples", "seed"};
  for (const auto& [key, value] : mine.values) {
    const bool used = std::count(it->second.begin(), it->second.end(), key) ||
                      (is_generated() && std::count(common.begin(), common.end(), key)) || key == "name";
    if (!used && value != defaults.values.at(key))
      fail("{}: task.{} does not apply to task '{}'{}", source, key, name,
           it->second.empty() ? std::string() : fmt::format(" (its keys: {})", fmt::join(it->second, ", ")));
  }
  if (is_translation()) {
    for (const auto& [key, lang] : {std::pair{"src", src}, std::pair{"tgt", tgt}})
      if (lang != "en" && lang != "de") fail("{}: task.{} must be en or de, got '{}'", source, key, lang);
    if (src == tgt) fail("{}: task.src and task.tgt are both '{}'", source, src);
  }
  if (!is_generated()) return;
  auto at_least = [&](const char* key, int64_t value, int64_t min) {
    if (value < min) fail("{}: task.{} must be at least {}, got {}", source, key, min, value);
  };
  at_least("train_examples", train_examples, 0);
  at_least("valid_examples", valid_examples, 1);
  at_least("test_examples", test_examples, 1);
  if (name == "selective_copying") {
    at_least("vocab", vocab, 1);
    at_least("n_tokens", n_tokens, 1);
    if (n_tokens > seq_len) fail("{}: task.n_tokens ({}) exceeds task.seq_len ({})", source, n_tokens, seq_len);
  } else if (name == "mqar") {
    at_least("vocab", vocab, 4);
    at_least("n_tokens", n_tokens, 1);
    if (n_tokens > vocab / 2)
      fail("{}: task.n_tokens ({}) exceeds the {} keys (task.vocab / 2)", source, n_tokens, vocab / 2);
    if (seq_len < 4 * n_tokens)
      fail("{}: task.seq_len ({}) must be at least 4 * task.n_tokens ({}): pairs, then queries", source, seq_len,
           4 * n_tokens);
  } else if (name == "induction_heads") {
    at_least("vocab", vocab, 2);
    at_least("seq_len", seq_len, 4);
  } else if (name == "addition") {
    if (format != "plain" && format != "reversed")
      fail("{}: task.format must be plain or reversed, got '{}'", source, format);
    if (digits < 1 || digits > 9) fail("{}: task.digits must be 1 .. 9, got {}", source, digits);
  } else if (name == "listops") {
    at_least("max_depth", max_depth, 1);
    at_least("max_args", max_args, 2);
    at_least("min_length", min_length, 1);
    if (max_length < min_length)
      fail("{}: task.max_length ({}) is below task.min_length ({})", source, max_length, min_length);
  }
}

std::unique_ptr<Task> make_task(const TaskConfig& c) {
  c.validate("task");
  if (c.name == "selective_copying") return std::make_unique<SelectiveCopying>(c);
  if (c.name == "mqar") return std::make_unique<Mqar>(c);
  if (c.name == "induction_heads") return std::make_unique<InductionHeads>(c);
  if (c.name == "addition") return std::make_unique<Addition>(c);
  if (c.name == "listops") return std::make_unique<ListOps>(c);
  fail("task '{}' is language modelling, not a generated task", c.name);
}

TaskData::TaskData(const TaskConfig& config) : config_(config), task_(make_task(config)) {
  std::unordered_set<std::string> seen;
  // Draws `count` distinct examples not seen before; gives up when the task has too few.
  auto draw = [&](int64_t count, uint64_t stream, std::vector<Example>& out) {
    std::mt19937_64 rng(splitmix64(static_cast<uint64_t>(config_.seed) * 16 + stream));
    int64_t misses = 0;
    while (static_cast<int64_t>(out.size()) < count) {
      Example e = task_->sample(rng);
      if (seen.insert(key_of(e)).second) {
        out.push_back(std::move(e));
        misses = 0;
      } else if (++misses > 100000) {
        fail("task {}: cannot draw {} distinct examples (the task has too few; lower the split sizes)", config_.name,
             count);
      }
    }
  };
  draw(config_.valid_examples, 1, valid_);
  draw(config_.test_examples, 2, test_);
  held_out_ = seen;
  draw(config_.train_examples, 3, train_);
}

Example TaskData::draw_training(std::mt19937_64& rng) const {
  for (int64_t attempt = 0; attempt < 100000; ++attempt) {
    Example e = task_->sample(rng);
    if (!held_out_.count(key_of(e))) return e;
  }
  fail("task {}: every generated example is a held-out one", config_.name);
}

TaskBatch TaskData::sample(uint64_t seed, int64_t step, int64_t micro, int64_t batch_size) const {
  std::mt19937_64 rng(
      splitmix64(splitmix64(splitmix64(seed) + static_cast<uint64_t>(step)) + static_cast<uint64_t>(micro)));
  std::vector<Example> fresh;
  std::vector<const Example*> picked;
  for (int64_t i = 0; i < batch_size; ++i) {
    if (!train_.empty()) {
      picked.push_back(&train_[uniform(rng, 0, static_cast<int64_t>(train_.size()) - 1)]);
    } else {
      fresh.push_back(draw_training(rng));
    }
  }
  for (const auto& e : fresh) picked.push_back(&e);
  return collate(picked);
}

const std::vector<Example>& TaskData::split(const std::string& name) const {
  if (name == "valid") return valid_;
  if (name == "test") return test_;
  if (name == "train") return train_;
  fail("unknown split '{}' (valid: train, valid, test)", name);
}

std::vector<TaskBatch> TaskData::split_batches(const std::string& name, int64_t batch_size) const {
  const auto& examples = split(name);
  std::vector<TaskBatch> out;
  for (size_t start = 0; start < examples.size(); start += static_cast<size_t>(batch_size)) {
    std::vector<const Example*> picked;
    for (size_t i = start; i < std::min(examples.size(), start + static_cast<size_t>(batch_size)); ++i)
      picked.push_back(&examples[i]);
    out.push_back(collate(picked));
  }
  return out;
}

std::pair<int64_t, double> TaskData::majority_baseline(const std::string& name) const {
  std::vector<int64_t> counts(static_cast<size_t>(std::max<int64_t>(task_->n_classes(), 1)), 0);
  const auto& reference = train_.empty() ? valid_ : train_;
  for (const auto& e : reference)
    if (e.label >= 0) ++counts[e.label];
  const int64_t majority = std::max_element(counts.begin(), counts.end()) - counts.begin();
  const auto& examples = split(name);
  const auto hits =
      std::count_if(examples.begin(), examples.end(), [&](const Example& e) { return e.label == majority; });
  return {majority, examples.empty() ? 0.0 : static_cast<double>(hits) / static_cast<double>(examples.size())};
}

TaskBatch TaskData::collate(const std::vector<const Example*>& examples) const {
  const auto b = static_cast<int64_t>(examples.size()), length = task_->max_length();
  const bool classify = task_->n_classes() > 0;
  auto inputs = torch::zeros({b, length}, torch::kLong);
  auto targets = classify ? torch::empty({b}, torch::kLong) : torch::full({b, length}, -1, torch::kLong);
  auto in = inputs.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const auto& e = *examples[i];
    for (size_t t = 0; t < e.tokens.size(); ++t) in[i][t] = e.tokens[t];
    if (classify) {
      targets.data_ptr<int64_t>()[i] = e.label;
    } else {
      auto out = targets.accessor<int64_t, 2>();
      for (size_t t = 0; t < e.targets.size(); ++t) out[i][t] = e.targets[t];
    }
  }
  return {inputs, targets};
}

}  // namespace loom
