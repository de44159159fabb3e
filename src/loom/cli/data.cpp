#include <cstdio>

#include "loom/cli/commands.h"
#include "loom/data/corpus.h"
#include "loom/data/lm_data.h"

namespace loom::cli {

void add_data(CLI::App& app, const GlobalOptions&) {
  struct Args {
    std::string corpus = "austen";
    int vocab_size = 8192;
    std::string dir = "data";
    bool list = false;
  };
  auto args = std::make_shared<Args>();
  app.add_option("--corpus", args->corpus, "corpus name");
  app.add_option("--vocab-size", args->vocab_size, "tokenizer vocabulary size")->check(CLI::Range(256, 1 << 20));
  app.add_option("--dir", args->dir, "data directory (cache)");
  app.add_flag("--list", args->list, "list the built-in corpora");
  app.callback([args] {
    if (args->list) {
      for (const auto& name : known_corpora()) std::printf("%s\n", name.c_str());
      return;
    }
    const LMData data = prepare_lm_data(args->corpus, args->vocab_size, args->dir);
    for (const auto& [split, path] : {std::pair{"train", data.train_tokens}, std::pair{"valid", data.valid_tokens},
                                      std::pair{"test", data.test_tokens}}) {
      TokenStream stream(path);
      std::printf("%-5s %10lld tokens  unigram entropy %.4f nats/token  %s\n", split,
                  static_cast<long long>(stream.size()), unigram_entropy(stream), path.c_str());
    }
    std::printf("tokenizer %s\n", data.tokenizer_model.c_str());
  });
}

}  // namespace loom::cli
