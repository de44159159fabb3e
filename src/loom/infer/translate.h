// Translation with an encoder-decoder (model.arch encoder_decoder): batched beam search, greedy
// decoding and sampling, with fairseq's SequenceGenerator semantics (Ott et al. 2019):
//   - the source is encoded once; each sentence's memory is repeated for its `beam` rows;
//   - each step scores every (beam, token) pair by the hypothesis' summed log-probability (fp32
//     log_softmax of the logits) and takes the best 2 * beam candidates per sentence; eos among
//     the best `beam` finalizes a hypothesis, scored sum log p / length^lenpen (length counts the
//     eos); the best `beam` non-eos candidates continue;
//   - a sentence is done once it has `beam` finished hypotheses, or at its maximum length, where
//     eos is forced; done sentences leave the batch, so later steps run on fewer rows;
//   - eos is not allowed as the first token (fairseq's min_len 1).
// Differences from fairseq: the maximum length is per sentence (a * its source length + b, not
// a * the padded batch length + b), so a sentence's translation does not depend on its batch.
// Shapes: N sources, S source tokens (eos included), R = active sentences * beam rows, V vocab.
#pragma once
#include <cstdint>
#include <vector>

#include "loom/infer/sampler.h"
#include "loom/models/model.h"

namespace loom {

struct SearchOptions {
  int64_t beam = 4;             // hypotheses kept per sentence; 1 = greedy (argmax) decoding
  int64_t nbest = 1;            // hypotheses returned per source, best first (<= beam)
  double lenpen = 1.0;          // final score = sum log p / length^lenpen, length counting the eos (fairseq)
  double max_len_a = 1.2;       // at most a * source length (tokens, eos excluded) + b target tokens,
  int64_t max_len_b = 10;       // eos excluded; capped by the model's context - 1 and at least 1
  int64_t no_repeat_ngram = 0;  // > 0: no hypothesis repeats an n-gram of this size (fairseq --no-repeat-ngram-size)
  double unkpen = 0;            // subtracted from the unk token's log-prob (fairseq --unkpen)
  bool sampling = false;        // draw each token with `sample` (temperature, top-k, top-p) instead of
  SamplingOptions sample;       // searching; needs beam 1. One generator serves the batch's rows in turn.
  bool use_cache = true;        // false: recompute the whole prefix every step (testing)
  bool bf16 = false;            // matmuls under bf16 autocast (log-probs still fp32)
  int64_t bos = 1, eos = 2, unk = 0;
};

struct Hypothesis {
  std::vector<int64_t> tokens;           // the translation, without bos and eos
  double score = 0;                      // sum of log-probs (eos included) / length^lenpen
  std::vector<float> positional_scores;  // each token's log-prob (unk penalty included), then the eos's
};

// sources: the token ids of each source sentence WITHOUT eos (appended here, as in training); a
// source may be empty. A source longer than the model's context allows (max_seq_len - 1 tokens,
// then eos) is truncated to its first max_seq_len - 1 tokens. Returns, per source in input order,
// up to nbest hypotheses, best first (fewer only when the search finished fewer: a tiny vocabulary
// or bans that leave nothing). Runs without gradients in eval mode and restores the model's mode.
std::vector<std::vector<Hypothesis>> translate_batch(Model& model, const std::vector<std::vector<int64_t>>& sources,
                                                     const SearchOptions& options);

}  // namespace loom
