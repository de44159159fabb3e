// `loom translate`'s line input: each line encoded by SentencePiece ($LOOM_FUZZ_SPM), cut to the
// model's context, then beam search with a tiny random encoder-decoder, and the output decoded.
#include "loom/infer/translate.h"
#include "fuzz_util.h"
#include "loom/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const loom::Tokenizer tokenizer = loom::Tokenizer::load(std::getenv("LOOM_FUZZ_SPM"));
  static loom::Model model = [] {
    torch::manual_seed(1);
    loom::ModelConfig c;
    c.arch = "encoder_decoder";
    c.vocab_size = tokenizer.vocab_size(), c.d_model = 16, c.n_layers = 1, c.n_heads = 2, c.d_ff = 32;
    c.max_seq_len = 24;
    c.validate("fuzz");
    return loom::Model(c);
  }();
  loom::SearchOptions options;
  options.beam = 2, options.nbest = 2, options.max_len_b = 4;
  options.bos = tokenizer.bos_id(), options.eos = tokenizer.eos_id(), options.unk = 0;
  std::vector<std::vector<int64_t>> sources;
  for (auto line : fuzz::split(std::string_view(reinterpret_cast<const char*>(data), size), "\n")) {
    if (sources.size() == 4) break;
    std::vector<int64_t> tokens;
    for (int id : tokenizer.encode(line)) tokens.push_back(id);
    if (tokens.size() > 23) tokens.resize(23);
    sources.push_back(std::move(tokens));
  }
  for (const auto& hypotheses : loom::translate_batch(model, sources, options))
    for (const auto& h : hypotheses) (void)tokenizer.decode(std::vector<int>(h.tokens.begin(), h.tokens.end()));
  return 0;
}
