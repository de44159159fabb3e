#include <cstdio>

#include "loom/cli/commands.h"
#include "loom/convert/llama_format.h"

namespace loom::cli {

void add_import(CLI::App& app, const GlobalOptions&) {
  struct Args {
    std::string source, out;
  };
  auto args = std::make_shared<Args>();
  app.add_option("source", args->source, "a GGUF file (llama) or a Hugging Face LLaMA directory")->required();
  app.add_option("--out", args->out, "the loom checkpoint directory to write")->required();
  app.callback([args] {
    const ImportSummary s = import_checkpoint(args->source, args->out);
    const ModelConfig& c = s.config;
    std::printf(
        "imported %s (%s) into %s: %lld layers, d_model %lld, %lld/%lld heads, d_ff %lld, vocab %lld, "
        "position %s, %s embeddings; tokenizer: %s\n",
        args->source.c_str(), s.source.c_str(), s.dir.c_str(), static_cast<long long>(c.n_layers),
        static_cast<long long>(c.d_model), static_cast<long long>(c.n_heads), static_cast<long long>(c.kv_heads()),
        static_cast<long long>(c.d_ff), static_cast<long long>(c.vocab_size), c.position.c_str(),
        c.tie_embeddings ? "tied" : "untied", s.tokenizer.c_str());
    if (s.q4_0_weights > 0)
      std::printf("kept the file's Q4_0 blocks of %lld linear weights (a q4 checkpoint)\n",
                  static_cast<long long>(s.q4_0_weights));
  });
}

}  // namespace loom::cli
