// LM data preparation and batching; see lm_data.h.
#include "loom/data/lm_data.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "loom/core/error.h"
#include "loom/core/hash.h"
#include "loom/core/log.h"
#include "loom/data/corpus.h"
#include "loom/data/tokenizer.h"

namespace fs = std::filesystem;

namespace loom {

void encode_text_file(const Tokenizer& tokenizer, const std::string& txt, const std::string& bin) {
  std::ifstream in(txt);
  if (!in) fail("cannot open {}", txt);
  std::vector<int32_t> tokens;
  std::string line;
  while (std::getline(in, line)) {
    const auto ids = tokenizer.encode(line);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    tokens.push_back(tokenizer.eos_id());
  }
  write_token_file(bin, tokens, tokenizer.vocab_size());
  logger().info("encoded {}: {} tokens -> {}", txt, tokens.size(), bin);
}

LMData prepare_lm_data(const std::string& corpus, int vocab_size, const std::string& data_dir) {
  const CorpusFiles text = fetch_corpus(corpus, data_dir);
  const fs::path dir = fs::path(data_dir) / corpus;
  const std::string sp = "sp" + std::to_string(vocab_size);
  LMData out{(dir / (sp + ".model")).string(), (dir / ("train." + sp + ".bin")).string(),
             (dir / ("valid." + sp + ".bin")).string(), (dir / ("test." + sp + ".bin")).string()};
  if (!fs::exists(out.tokenizer_model)) {
    const auto t0 = std::chrono::steady_clock::now();
    train_tokenizer(text.train, vocab_size, out.tokenizer_model);
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    logger().info("trained {} in {:.1f} s", out.tokenizer_model, dt.count());
  }
  std::optional<Tokenizer> tokenizer;  // loaded only when some split needs encoding
  const std::pair<const std::string*, const std::string*> splits[] = {
      {&text.train, &out.train_tokens}, {&text.valid, &out.valid_tokens}, {&text.test, &out.test_tokens}};
  for (const auto& [txt, bin] : splits) {
    if (fs::exists(*bin)) continue;
    if (!tokenizer) tokenizer = Tokenizer::load(out.tokenizer_model);
    encode_text_file(*tokenizer, *txt, *bin);
  }
  return out;
}

LMBatcher::LMBatcher(const TokenStream& stream, int batch_size, int seq_len)
    : stream_(&stream), batch_size_(batch_size), seq_len_(seq_len) {
  if (batch_size <= 0 || seq_len <= 0) {
    fail("LMBatcher needs positive batch_size and seq_len, got {} and {}", batch_size, seq_len);
  }
  if (stream.size() < static_cast<int64_t>(seq_len) + 1) {
    fail("token file {} has {} tokens, fewer than seq_len + 1 = {}", stream.path(), stream.size(), seq_len + 1);
  }
}

std::pair<torch::Tensor, torch::Tensor> LMBatcher::sample(uint64_t seed, int64_t step, int micro_index) const {
  // Row r of micro-batch m is the step's row m * batch_size + r, drawn from its own hash: a step's
  // rows do not depend on how they are cut into micro-batches (batch 2b equals two micro-batches
  // of b), nor on how many processes share them. Starts uniform in [0, size - seq_len - 1], by
  // modulo (the bias is < range / 2^64).
  const uint64_t step_key = splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(step));
  const auto range = static_cast<uint64_t>(stream_->size() - seq_len_);
  std::vector<torch::Tensor> windows;
  for (int b = 0; b < batch_size_; ++b) {
    const auto row = static_cast<uint64_t>(micro_index) * static_cast<uint64_t>(batch_size_) + static_cast<uint64_t>(b);
    const auto start = static_cast<int64_t>(splitmix64(step_key ^ splitmix64(row)) % range);
    windows.push_back(stream_->slice(start, seq_len_ + 1));  // [seq_len + 1]
  }
  torch::Tensor w = torch::stack(windows);  // [batch_size, seq_len + 1]
  return {w.narrow(1, 0, seq_len_).contiguous(), w.narrow(1, 1, seq_len_).contiguous()};
}

std::vector<std::pair<torch::Tensor, torch::Tensor>> LMBatcher::eval_batches(int max_batches) const {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
  const int64_t n_windows = num_eval_windows();
  for (int64_t first = 0; first < n_windows; first += batch_size_) {
    if (max_batches > 0 && static_cast<int64_t>(out.size()) >= max_batches) break;
    const int64_t n = std::min<int64_t>(batch_size_, n_windows - first);
    // Windows are adjacent, so one slice of n * seq_len + 1 tokens holds the whole batch.
    torch::Tensor flat = stream_->slice(first * seq_len_, n * seq_len_ + 1);   // [n*seq_len + 1]
    out.emplace_back(flat.narrow(0, 0, n * seq_len_).view({n, seq_len_}),      // x: [n, seq_len]
                     flat.narrow(0, 1, n * seq_len_).reshape({n, seq_len_}));  // y: [n, seq_len]
  }
  return out;
}

}  // namespace loom
