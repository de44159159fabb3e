// Translation data: a parallel corpus (data/parallel.h) -> one joint SentencePiece vocabulary ->
// token-id pairs per split -> micro-batches of similar-length pairs packed under a token budget.
//
// Sequences follow fairseq: the source is its tokens + eos; the decoder reads bos + target and
// predicts target + eos. Batch tensors are padded with -1.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "loom/data/parallel.h"
#include "loom/data/tokenizer.h"

namespace loom {

struct TranslationPair {
  std::vector<int32_t> src, tgt;  // token ids, without eos/bos
  int64_t line = 0;               // line number in the split files
};

struct TranslationSplit {
  std::vector<TranslationPair> pairs;           // training-usable pairs (both sides fit the context)
  std::vector<std::string> src_text, tgt_text;  // every line of the split, as written
  int64_t too_long = 0;                         // pairs left out of `pairs`: a side exceeds the context
};

// source [B, S], inputs [B, T] = bos + target, targets [B, T] = target + eos; all -1-padded.
struct TranslationBatch {
  torch::Tensor source, inputs, targets;
};

// A built-in parallel corpus (fetched if needed) or a user's own, <data_dir>/<corpus>/ holding
// {train,valid,test}.{src,tgt}: the six files of direction src -> tgt.
ParallelFiles find_parallel_files(const std::string& corpus, const std::string& data_dir, const std::string& src,
                                  const std::string& tgt);

// Reads a split's two files (same line count) and encodes every line; pairs whose source + eos or
// bos + target exceed max_len are left out of `pairs` (counted in too_long).
TranslationSplit encode_split(const Tokenizer& tokenizer, const std::string& src_path, const std::string& tgt_path,
                              int64_t max_len);

// Micro-batches of pair indices: pairs sorted by (source length, target length, index) and cut
// greedily so that pairs x the longest sequence (source + eos or bos + target) <= max_tokens,
// padding counted, as fairseq's --max-tokens; max_tokens 0 = max_sentences pairs per batch.
// A pair longer than max_tokens alone gets a batch of its own.
std::vector<std::vector<int64_t>> length_batches(const std::vector<TranslationPair>& pairs, int64_t max_tokens,
                                                 int64_t max_sentences);

TranslationBatch collate_pairs(const std::vector<TranslationPair>& pairs, const std::vector<int64_t>& indices,
                               int64_t bos, int64_t eos);

class TranslationData {
 public:
  // Fetches the corpus in direction src -> tgt, trains (or reuses) the joint tokenizer
  // <data_dir>/<corpus>/joint.sp<vocab_size>.model on train.src + train.tgt, and encodes the
  // splits. Pairs whose source + eos or bos + target exceed max_len tokens are kept out of
  // training and loss evaluation (counted in too_long), as fairseq's --skip-invalid-size-inputs.
  TranslationData(const std::string& corpus, const std::string& data_dir, const std::string& src,
                  const std::string& tgt, int vocab_size, int64_t max_len);

  const Tokenizer& tokenizer() const { return tokenizer_; }
  const std::string& tokenizer_path() const { return tokenizer_path_; }
  const ParallelFiles& files() const { return files_; }
  const TranslationSplit& split(const std::string& name) const;  // "train", "valid" or "test"

  // Training: the budgeted batches of the train split, visited in a fresh random order every
  // epoch. Micro-batch `micro` of step `step` is a pure function of (seed, step, micro), so a
  // resumed run sees the same batches.
  void make_training_batches(int64_t max_tokens, int64_t max_sentences);
  TranslationBatch sample(uint64_t seed, int64_t step, int64_t micro, int64_t grad_accum) const;
  int64_t batches_per_epoch() const { return static_cast<int64_t>(train_batches_.size()); }
  // A held-out split in length-sorted budgeted batches (every usable pair once).
  std::vector<TranslationBatch> split_batches(const std::string& name, int64_t max_tokens, int64_t max_sentences) const;

 private:
  ParallelFiles files_;
  Tokenizer tokenizer_;
  std::string tokenizer_path_;
  TranslationSplit train_, valid_, test_;
  std::vector<std::vector<int64_t>> train_batches_;
};

}  // namespace loom
