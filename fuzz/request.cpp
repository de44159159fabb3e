// `loom serve`'s request bodies: the first byte picks /v1/completions or /v1/chat/completions, the
// rest is the body. parse_completion_request must accept it or answer an ApiError.
#include "loom/serve/request.h"
#include "byte_vocab.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const loom::Tokenizer tokenizer = loom::Tokenizer::from_bpe_json(fuzz::byte_vocab_json());
  if (size == 0) return 0;
  for (const auto chat_template : {loom::ChatTemplate::kLoom, loom::ChatTemplate::kChatMl}) {
    loom::RequestLimits limits;
    limits.context = 256;
    limits.max_tokens = 64;
    limits.chat_template = chat_template;
    limits.chatml_end = 265;
    try {
      const auto r = loom::parse_completion_request(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1),
                                                    data[0] & 1, tokenizer, limits);
      // What it accepted, the scheduler must accept too.
      if (r.params.prompt.empty() || r.params.max_tokens < 1 ||
          static_cast<int64_t>(r.params.prompt.size()) + r.params.max_tokens > limits.context)
        std::abort();
    } catch (const loom::ApiError&) {}
  }
  return 0;
}
