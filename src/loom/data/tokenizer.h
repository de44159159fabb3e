// SentencePiece tokenizer: training (BPE, byte fallback, so any byte sequence encodes without
// <unk>) and a small value type around the processor that carries the serialized model, so that
// checkpoints can embed the exact tokenizer they were trained with. SentencePiece itself lives in
// the shim module libloom_sentencepiece.so, loaded on first use (see data/spm_shim/spm_api.h).
// A Tokenizer may instead hold a byte-level BPE vocabulary (data/bpe_tokenizer.h): the one an
// imported GGUF model such as SmolLM2 brings, stored as tokenizer.gguf.json; encode, decode and
// the ids then go to it.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

class BpeTokenizer;

// Trains a BPE model on `train_txt` (one sentence/paragraph per line) and writes it to
// `model_path`. Special ids: unk 0, bos 1, eos 2, no pad. Deterministic: fixed seed, every input
// line used in file order, identity normalization (the text is not rewritten).
void train_tokenizer(const std::string& train_txt, int vocab_size, const std::string& model_path);

class Tokenizer {
 public:
  Tokenizer() = default;  // empty: only load() and from_bytes() make a usable tokenizer
  // A file named *.json is a byte-level BPE vocabulary (BpeTokenizer::load), anything else a
  // SentencePiece model.
  static Tokenizer load(const std::string& model_path);
  static Tokenizer from_bytes(const std::string& serialized_model);
  static Tokenizer from_bpe_json(const std::string& json_text);

  // A BPE vocabulary matches its control tokens (e.g. "<|im_start|>") in the text, as llama.cpp
  // does for prompts (parse_special); SentencePiece encodes all text literally.
  std::vector<int> encode(std::string_view text) const;
  std::string decode(const std::vector<int>& ids) const;  // ids out of range -> loom::Error

  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  // The ids `loom generate` puts before a prompt: eos for loom's own models (their training text
  // is paragraphs each ended by eos, so eos starts a paragraph); for a BPE vocabulary, the model's
  // own convention: bos when its GGUF says add_bos_token, else nothing.
  std::vector<int> prompt_prefix() const;
  const std::string& serialized() const { return serialized_; }  // the model file's bytes
  const char* file_name() const;                                 // the name a checkpoint stores serialized() under

 private:
  const void* handle() const;
  std::shared_ptr<const void> processor_;    // a SentencePieceProcessor inside the shim
  std::shared_ptr<const BpeTokenizer> bpe_;  // set instead of processor_ for a BPE vocabulary
  std::string serialized_;
};

}  // namespace loom
