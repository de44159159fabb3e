#include "loom/infer/translate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>

#include "loom/core/compat.h"
#include "loom/core/error.h"

namespace loom {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Puts the model in eval mode and restores its mode on every exit, exceptions included.
class EvalMode {
 public:
  explicit EvalMode(Model& model) : model_(model), was_training_(model->is_training()) { model_->eval(); }
  ~EvalMode() { model_->train(was_training_); }
  EvalMode(const EvalMode&) = delete;
  EvalMode& operator=(const EvalMode&) = delete;

 private:
  Model& model_;
  bool was_training_;
};

void check_options(const ModelConfig& c, const SearchOptions& o, const std::vector<std::vector<int64_t>>& sources) {
  if (!c.encoder_decoder())
    fail("translation needs an encoder-decoder (model.arch encoder_decoder), this model is a {}", c.arch);
  if (o.beam < 1) fail("beam must be >= 1, got {}", o.beam);
  if (o.nbest < 1 || o.nbest > o.beam) fail("nbest must be between 1 and the beam size {}, got {}", o.beam, o.nbest);
  if (o.sampling && o.beam != 1) fail("sampling draws one hypothesis per source: it needs beam 1, got beam {}", o.beam);
  if (o.no_repeat_ngram < 0) fail("no-repeat-ngram must be >= 0, got {}", o.no_repeat_ngram);
  if (c.max_seq_len < 2) fail("the model's context of {} tokens leaves no room for a translation", c.max_seq_len);
  for (int64_t id : {o.bos, o.eos, o.unk})
    if (id < 0 || id >= c.vocab_size) fail("special token id {} is outside the vocabulary [0, {})", id, c.vocab_size);
  for (size_t i = 0; i < sources.size(); ++i)
    for (int64_t id : sources[i])
      if (id < 0 || id >= c.vocab_size)
        fail("source {}: token id {} is outside the vocabulary [0, {})", i, id, c.vocab_size);
}

// fairseq's NGramRepeatBlock: bans, per row, every token that would complete an n-gram the row's
// generated tokens already hold. tokens: [R, 1 + generated] (bos first, not part of any n-gram);
// lprobs [R, V] is modified.
void ban_repeated_ngrams(const torch::Tensor& tokens, torch::Tensor& lprobs, int64_t n) {
  const int64_t rows = tokens.size(0), t = tokens.size(1) - 1;
  if (t < n - 1 || t == 0) return;  // no complete n-gram yet
  auto cpu = tokens.cpu().contiguous();
  std::vector<int64_t> ban_rows, ban_tokens;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* seq = cpu.data_ptr<int64_t>() + r * (t + 1) + 1;  // the generated tokens
    // The n-gram ending at the next token starts with seq[t - n + 1 .. t - 1].
    for (int64_t start = 0; start + n - 1 < t; ++start) {
      if (std::equal(seq + start, seq + start + n - 1, seq + t - n + 1)) {
        ban_rows.push_back(r);
        ban_tokens.push_back(seq[start + n - 1]);
      }
    }
  }
  if (ban_rows.empty()) return;
  auto device = lprobs.device();
  lprobs.index_put_({torch::tensor(ban_rows).to(device), torch::tensor(ban_tokens).to(device)}, kNegInf);
}

}  // namespace

std::vector<std::vector<Hypothesis>> translate_batch(Model& model, const std::vector<std::vector<int64_t>>& sources,
                                                     const SearchOptions& o) {
  const auto& c = model->config();
  check_options(c, o, sources);
  const int64_t n = static_cast<int64_t>(sources.size());
  std::vector<std::vector<Hypothesis>> finalized(sources.size());
  if (n == 0) return finalized;

  torch::NoGradGuard no_grad;
  compat::CpuAutocast autocast(o.bf16);
  EvalMode eval_mode(model);
  const auto device = model->tok_emb->weight.device();
  const auto on_device = torch::TensorOptions().device(device);
  const int64_t beam = o.beam, vocab = c.vocab_size, context = c.max_seq_len;

  // Sources truncated to the context (eos included), eos appended, padded with -1: [N, S]. Each
  // sentence's target budget: a * its length + b tokens before the eos, within the context (the
  // decoder reads bos + max_len tokens to choose the last, forced eos).
  std::vector<int64_t> max_len(sources.size());
  int64_t s = 1;
  for (const auto& source : sources) s = std::max<int64_t>(s, std::min<int64_t>(source.size(), context - 1) + 1);
  auto source = torch::full({n, s}, -1, torch::kLong);
  auto source_rows = source.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = std::min<int64_t>(sources[i].size(), context - 1);
    for (int64_t j = 0; j < len; ++j) source_rows[i][j] = sources[i][j];
    source_rows[i][len] = o.eos;
    const auto budget = static_cast<int64_t>(std::floor(o.max_len_a * static_cast<double>(len))) + o.max_len_b;
    max_len[i] = std::clamp<int64_t>(budget, 1, context - 1);
  }
  source = source.to(device);
  // Row r (sentence-major) serves sentence r / beam; each sentence's memory is repeated per beam.
  auto rows_of = torch::arange(n, on_device.dtype(torch::kLong)).repeat_interleave(beam);  // [N*beam]
  auto memory = model->encode(source).index_select(0, rows_of);                            // [N*beam, S, d_model]
  auto memory_padding = source.lt(0).index_select(0, rows_of);                             // [N*beam, S]
  KVCache cache;
  if (o.use_cache) cache = model->make_cache(n * beam, *std::max_element(max_len.begin(), max_len.end()) + 1);

  // The search state, per row of the active sentences: the tokens so far (bos first), the
  // summed log-prob and each token's log-prob. At step 0 every beam of a sentence holds the same
  // prefix, so only the first is live (fairseq expands lprobs[:, ::beam] alone).
  std::vector<int64_t> active(sources.size());
  std::iota(active.begin(), active.end(), 0);
  auto tokens = torch::full({n * beam, 1}, o.bos, on_device.dtype(torch::kLong));  // [R, step + 1]
  auto scores = torch::full({n, beam}, kNegInf, on_device.dtype(torch::kFloat));
  scores.select(1, 0).zero_();
  scores = scores.view({n * beam});                                               // [R]
  auto positional = torch::zeros({n * beam, 0}, on_device.dtype(torch::kFloat));  // [R, step]
  std::unique_ptr<Sampler> sampler;
  if (o.sampling) sampler = std::make_unique<Sampler>(o.sample);

  for (int64_t step = 0; !active.empty(); ++step) {
    const auto a = static_cast<int64_t>(active.size());
    const int64_t rows = a * beam;
    torch::Tensor hidden;  // [R, T, d_model]
    if (o.use_cache) {     // the cross-attention keys and values are projected from the memory once, at step 0
      hidden = model->decode_hidden(tokens.narrow(1, step, 1), step == 0 ? memory : torch::Tensor(), memory_padding,
                                    step, &cache);
      if (step == 0) memory = torch::Tensor();
    } else {
      hidden = model->decode_hidden(tokens, memory, memory_padding);
    }
    auto lprobs =
        torch::log_softmax(model->logits(hidden.select(1, hidden.size(1) - 1)).to(torch::kFloat), -1);  // [R, V]
    if (o.unkpen != 0) lprobs.select(1, o.unk).sub_(o.unkpen);
    // A sentence at its maximum length must end: eos keeps its log-prob, every other token is banned.
    std::vector<int64_t> forced;
    for (int64_t i = 0; i < a; ++i)
      if (step >= max_len[active[i]])
        for (int64_t b = 0; b < beam; ++b) forced.push_back(i * beam + b);
    if (!forced.empty()) {
      auto index = torch::tensor(forced).to(device);
      auto eos_lprobs = lprobs.select(1, o.eos).index_select(0, index);
      lprobs.index_fill_(0, index, kNegInf);
      lprobs.select(1, o.eos).index_copy_(0, index, eos_lprobs);
    }
    if (step == 0) lprobs.select(1, o.eos).fill_(kNegInf);  // fairseq's min_len 1: no empty translation
    if (o.no_repeat_ngram > 0) ban_repeated_ngrams(tokens, lprobs, o.no_repeat_ngram);

    // Candidates per sentence, best first: flat (beam, token) indices and summed log-probs [A, k].
    auto extended = lprobs + scores.unsqueeze(1);  // [R, V]
    torch::Tensor cand_scores, cand_index;
    if (o.sampling) {  // beam 1: one drawn candidate per sentence
      std::vector<int64_t> drawn(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) drawn[r] = (*sampler)(lprobs[r]);
      cand_index = torch::tensor(drawn).view({a, 1}).to(device);
      cand_scores = extended.gather(1, cand_index);
    } else {
      std::tie(cand_scores, cand_index) = extended.view({a, beam * vocab}).topk(std::min(2 * beam, beam * vocab));
    }
    cand_scores = cand_scores.cpu();
    cand_index = cand_index.cpu();
    const int64_t k = cand_index.size(1);
    auto cand_score = cand_scores.accessor<float, 2>();
    auto cand_id = cand_index.accessor<int64_t, 2>();

    // The rows' history, read only when a hypothesis ends.
    torch::Tensor history_tokens, history_positional, history_scores;
    auto finalize = [&](int64_t sentence, int64_t row, float score) {
      if (!history_tokens.defined()) {
        history_tokens = tokens.cpu(), history_positional = positional.cpu(), history_scores = scores.cpu();
      }
      Hypothesis h;
      auto row_tokens = history_tokens[row].narrow(0, 1, step).contiguous();
      h.tokens.assign(row_tokens.data_ptr<int64_t>(), row_tokens.data_ptr<int64_t>() + step);
      auto row_positional = history_positional[row].contiguous();
      h.positional_scores.assign(row_positional.data_ptr<float>(), row_positional.data_ptr<float>() + step);
      h.positional_scores.push_back(score - history_scores[row].item<float>());
      h.score = score / std::pow(static_cast<double>(step + 1), o.lenpen);  // the length counts the eos
      finalized[sentence].push_back(std::move(h));
    };

    // Eos among the best `beam` candidates ends a hypothesis; the best `beam` others continue.
    std::vector<int64_t> next_active, keep_rows, keep_tokens;
    std::vector<float> keep_scores;
    for (int64_t i = 0; i < a; ++i) {
      const int64_t sentence = active[i];
      auto& done = finalized[sentence];
      const size_t kept_before = keep_rows.size();
      for (int64_t j = 0; j < k; ++j) {
        const float score = cand_score[i][j];
        const int64_t row = i * beam + cand_id[i][j] / vocab, token = cand_id[i][j] % vocab;
        if (token == o.eos) {
          if (j < beam && score != kNegInf && static_cast<int64_t>(done.size()) < beam) finalize(sentence, row, score);
        } else if (static_cast<int64_t>(keep_rows.size() - kept_before) < beam) {
          keep_rows.push_back(row), keep_tokens.push_back(token), keep_scores.push_back(score);
        }
      }
      if (static_cast<int64_t>(done.size()) >= beam || step >= max_len[sentence]) {  // the sentence leaves the batch
        keep_rows.resize(kept_before), keep_tokens.resize(kept_before), keep_scores.resize(kept_before);
        continue;
      }
      // At most one eos per beam among 2 * beam candidates: `beam` others always remain.
      TORCH_CHECK(static_cast<int64_t>(keep_rows.size() - kept_before) == beam, "beam search kept too few candidates");
      next_active.push_back(sentence);
    }
    if (next_active.empty()) break;

    auto index = torch::tensor(keep_rows).to(device);  // [R'] rows that continue, in their new order
    auto next_scores = torch::tensor(keep_scores).to(device);
    tokens = torch::cat({tokens.index_select(0, index), torch::tensor(keep_tokens).view({-1, 1}).to(device)}, 1);
    positional =
        torch::cat({positional.index_select(0, index), (next_scores - scores.index_select(0, index)).unsqueeze(1)}, 1);
    scores = next_scores;
    memory_padding = memory_padding.index_select(0, index);
    if (o.use_cache) {
      // Beams reordered within their sentences keep their rows' cross-attention keys and values;
      // only when sentences leave do those rows move.
      select_cache_rows(cache, index, /*cross=*/next_active.size() != active.size(), /*length=*/step + 1);
    } else {
      memory = memory.index_select(0, index);
    }
    active = std::move(next_active);
  }

  for (auto& hypotheses : finalized) {
    std::stable_sort(hypotheses.begin(), hypotheses.end(),
                     [](const Hypothesis& x, const Hypothesis& y) { return x.score > y.score; });
    if (static_cast<int64_t>(hypotheses.size()) > o.nbest) hypotheses.resize(static_cast<size_t>(o.nbest));
  }
  return finalized;
}

}  // namespace loom
