// Encoded token cache: a flat file of token ids that training memory-maps instead of loading.
// Format (little-endian): 8-byte magic "LOOMTOK1", u32 bytes per token (2 when vocab_size <=
// 65536, else 4), u32 vocab_size, u64 n_tokens, then n_tokens ids.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace loom {

// Writes atomically (temporary file, fsync, rename). Ids must lie in [0, vocab_size).
void write_token_file(const std::string& path, const std::vector<int32_t>& tokens, int vocab_size);

class TokenStream {
 public:
  explicit TokenStream(const std::string& path);  // maps read-only; validates header and size
  ~TokenStream();
  TokenStream(TokenStream&& other) noexcept;
  TokenStream& operator=(TokenStream&& other) noexcept;
  TokenStream(const TokenStream&) = delete;
  TokenStream& operator=(const TokenStream&) = delete;

  int64_t size() const { return n_tokens_; }
  int vocab_size() const { return vocab_size_; }
  const std::string& path() const { return path_; }
  int32_t operator[](int64_t i) const;
  // Tokens [start, start + length) as an int64 tensor of shape [length]; bounds-checked.
  torch::Tensor slice(int64_t start, int64_t length) const;

 private:
  void release();
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const unsigned char* tokens_ = nullptr;
  int bytes_per_token_ = 0;
  int vocab_size_ = 0;
  int64_t n_tokens_ = 0;
};

// Entropy in nats per token of the stream's own unigram distribution: -sum_v p_v ln p_v. The loss
// a model reaches by learning token frequencies alone; a baseline for the first training steps.
double unigram_entropy(const TokenStream& stream);

}  // namespace loom
