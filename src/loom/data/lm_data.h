// Language-modelling data: corpus -> tokenizer -> token files (all cached under data_dir), and
// the batcher that training and evaluation draw windows from.
// Shapes: batch_size = number of windows per batch, seq_len = tokens per window.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "loom/data/token_stream.h"
#include "loom/data/tokenizer.h"

namespace loom {

struct LMData {
  std::string tokenizer_model;
  std::string train_tokens, valid_tokens, test_tokens;
};

// fetch_corpus, then trains <data_dir>/<corpus>/sp<vocab_size>.model on the train split if
// missing, then encodes each split (one paragraph per line, eos appended after each) to
// <data_dir>/<corpus>/<split>.sp<vocab_size>.bin if missing. A second call does no work.
LMData prepare_lm_data(const std::string& corpus, int vocab_size, const std::string& data_dir);

// Encodes a text file (one paragraph per line, eos after each) into a token file.
void encode_text_file(const Tokenizer& tokenizer, const std::string& txt, const std::string& bin);

class LMBatcher {
 public:
  // `stream` must outlive the batcher; it must hold at least seq_len + 1 tokens.
  LMBatcher(const TokenStream& stream, int batch_size, int seq_len);

  // Random windows, a pure function of (seed, step, micro_index), so a resumed run sees the same
  // batches without saved RNG state. Returns x, y: [batch_size, seq_len] int64, y[:, t] = x[:, t+1]
  // in the stream (the next token).
  std::pair<torch::Tensor, torch::Tensor> sample(uint64_t seed, int64_t step, int micro_index = 0) const;

  // The stream cut into consecutive non-overlapping windows (window i: x = tokens
  // [i*seq_len, (i+1)*seq_len), y = the same shifted by one), in order, batch_size per batch;
  // the last batch may be smaller. Every token but the first is a target exactly once, up to the
  // final partial window (< seq_len tokens), which is dropped. max_batches <= 0 means all.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> eval_batches(int max_batches) const;

  int64_t num_eval_windows() const { return (stream_->size() - 1) / seq_len_; }

 private:
  const TokenStream* stream_;
  int batch_size_, seq_len_;
};

}  // namespace loom
