#include <cstdio>
#include <fstream>
#include <tuple>

#include "loom/cli/commands.h"
#include "loom/core/error.h"
#include "loom/data/corpus.h"
#include "loom/data/lm_data.h"
#include "loom/data/parallel.h"

namespace loom::cli {
namespace {

size_t count_lines(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

bool is_parallel_corpus(const std::string& name) {
  for (const auto& known : known_parallel_corpora())
    if (known == name) return true;
  return false;
}

}  // namespace

void add_data(CLI::App& app, const GlobalOptions&) {
  struct Args {
    std::string corpus = "austen";
    int vocab_size = 8192;
    std::string dir = "data";
    bool list = false;
  };
  auto args = std::make_shared<Args>();
  app.add_option("--corpus", args->corpus, "corpus name (a language-model or a parallel corpus)");
  app.add_option("--vocab-size", args->vocab_size, "tokenizer vocabulary size")->check(CLI::Range(256, 1 << 20));
  app.add_option("--dir", args->dir, "data directory (cache)");
  app.add_flag("--list", args->list, "list the built-in corpora (language-model and parallel)");
  app.callback([args] {
    if (args->list) {
      for (const auto& name : known_corpora()) std::printf("%s\n", name.c_str());
      for (const auto& name : known_parallel_corpora()) std::printf("%s (parallel)\n", name.c_str());
      return;
    }
    // A parallel corpus is only converted here: the translation trainer trains its own joint
    // tokenizer on train.<src> + train.<tgt>.
    if (is_parallel_corpus(args->corpus)) {
      const auto [src_lang, tgt_lang] = parallel_corpus_languages(args->corpus);
      const ParallelFiles files = fetch_parallel_corpus(args->corpus, args->dir, src_lang, tgt_lang);
      for (const auto& [split, src, tgt] : {std::tuple{"train", files.train_src, files.train_tgt},
                                            std::tuple{"valid", files.valid_src, files.valid_tgt},
                                            std::tuple{"test", files.test_src, files.test_tgt}}) {
        const size_t n_src = count_lines(src), n_tgt = count_lines(tgt);
        if (n_src != n_tgt) fail("{} has {} lines but {} has {}", src, n_src, tgt, n_tgt);
        std::printf("%-5s %10zu pairs  %s  %s\n", split, n_src, src.c_str(), tgt.c_str());
      }
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
