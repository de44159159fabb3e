// Both tokenizers on arbitrary bytes: the byte-level BPE (a built-in vocabulary) and SentencePiece
// (the model in $LOOM_FUZZ_SPM, which scripts/fuzz.sh trains with `loom data`). Encoding any bytes
// and decoding any ids in range must not fail; byte-level BPE must give back valid UTF-8 without
// control-token text exactly.
#include <cstdio>

#include "byte_vocab.h"
#include "fuzz_util.h"
#include "loom/core/utf8.h"
#include "loom/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const loom::Tokenizer bpe = loom::Tokenizer::from_bpe_json(fuzz::byte_vocab_json());
  static const loom::Tokenizer spm = [] {
    const char* path = std::getenv("LOOM_FUZZ_SPM");
    if (path == nullptr) {
      std::fprintf(stderr, "set LOOM_FUZZ_SPM to a SentencePiece model\n");
      std::abort();
    }
    return loom::Tokenizer::load(path);
  }();
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const auto* t : {&bpe, &spm}) {
    const auto ids = t->encode(text);
    const std::string back = t->decode(ids);
    // Control tokens written in the text are parsed as such and decode to nothing.
    const bool plain = text.find("<|") == std::string::npos;
    if (t == &bpe && plain && loom::utf8_invalid_at(text) == std::string::npos && back != text) std::abort();
    std::vector<int> arbitrary;
    for (size_t i = 0; i + 1 < size; i += 2) arbitrary.push_back((data[i] | data[i + 1] << 8) % t->vocab_size());
    (void)t->decode(arbitrary);
  }
  return 0;
}
