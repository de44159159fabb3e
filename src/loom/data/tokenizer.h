// SentencePiece tokenizer: training (BPE, byte fallback, so any byte sequence encodes without
// <unk>) and a small value type around the processor that carries the serialized model, so that
// checkpoints can embed the exact tokenizer they were trained with. SentencePiece itself lives in
// the shim module libloom_sentencepiece.so, loaded on first use (see data/spm_shim/spm_api.h).
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

// Trains a BPE model on `train_txt` (one sentence/paragraph per line) and writes it to
// `model_path`. Special ids: unk 0, bos 1, eos 2, no pad. Deterministic: fixed seed, every input
// line used in file order, identity normalization (the text is not rewritten).
void train_tokenizer(const std::string& train_txt, int vocab_size, const std::string& model_path);

class Tokenizer {
 public:
  Tokenizer() = default;  // empty: only load() and from_bytes() make a usable tokenizer
  static Tokenizer load(const std::string& model_path);
  static Tokenizer from_bytes(const std::string& serialized_model);

  std::vector<int> encode(std::string_view text) const;
  std::string decode(const std::vector<int>& ids) const;  // ids out of range -> loom::Error

  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  const std::string& serialized() const { return serialized_; }  // the ModelProto bytes

 private:
  const void* handle() const;
  std::shared_ptr<const void> processor_;  // a SentencePieceProcessor inside the shim
  std::string serialized_;
};

}  // namespace loom
