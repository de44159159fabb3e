// A GGUF vocabulary as `loom import` stores it (tokenizer.gguf.json): parse, then encode and decode.
#include "fuzz_util.h"
#include "loom/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::refuses_cleanly([&] {
    const auto t = loom::Tokenizer::from_bpe_json(std::string(reinterpret_cast<const char*>(data), size));
    const auto ids = t.encode("The cat <|im_start|> sat\n\n 12345 caf\xC3\xA9");
    (void)t.decode(ids);
    std::vector<int> all;
    for (int id = 0; id < t.vocab_size() && id < 4096; ++id) all.push_back(id);
    (void)t.decode(all);
  });
  return 0;
}
