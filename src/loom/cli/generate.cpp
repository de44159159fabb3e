#include <cstdio>

#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/infer/generate.h"
#include "loom/checkpoint/checkpoint.h"

namespace loom::cli {

void add_sampling_options(CLI::App& app, SamplingOptions& options) {
  app.add_option("--temperature", options.temperature, "sampling temperature; 0 = greedy")->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", options.top_k, "sample among the k likeliest tokens (0 = off)")->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", options.top_p, "sample within the smallest set of this mass (1 = off)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", options.seed, "sampling seed");
}

void add_generate(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string checkpoint;
    std::string prompt;
    GenerateOptions options;
    bool ignore_eos = false;
  };
  auto args = std::make_shared<Args>();
  args->options.max_new_tokens = 200;
  app.add_option("checkpoint", args->checkpoint, "checkpoint or run directory")->required();
  app.add_option("--prompt", args->prompt, "text to continue (empty: start a new paragraph)");
  app.add_option("--max-new-tokens", args->options.max_new_tokens, "tokens to generate at most")
      ->check(CLI::NonNegativeNumber);
  add_sampling_options(app, args->options.sampling);
  app.add_flag("--ignore-eos", args->ignore_eos, "keep generating past eos (for benchmarks)");
  app.callback([args, &global] {
    configure_threads(global.threads);
    auto loaded = load_checkpoint(args->checkpoint);
    require_tokenizer(loaded, "generate");
    const auto& tokenizer = loaded.tokenizer;
    // The model's own start convention (Tokenizer::prompt_prefix): eos for loom's models, whose
    // training text is paragraphs each ended by eos, so generation starts a paragraph and stops
    // at its end; bos or nothing for an imported model.
    const std::vector<int> prefix = tokenizer.prompt_prefix();
    std::vector<int64_t> prompt(prefix.begin(), prefix.end());
    for (int id : tokenizer.encode(args->prompt)) prompt.push_back(id);
    if (prompt.empty()) fail("generate: this model takes no start token, so --prompt must not be empty");
    if (static_cast<int64_t>(prompt.size()) >= loaded.recipe.model.max_seq_len)
      fail("the prompt is {} tokens but the model's context is {} tokens", prompt.size(),
           loaded.recipe.model.max_seq_len);
    args->options.stop_token = args->ignore_eos ? -1 : tokenizer.eos_id();
    // Decode prompt and continuation together and print what is new: SentencePiece drops the
    // leading space of a sequence's first piece, and a token may end inside a UTF-8 character
    // (decoded as U+FFFD until complete), so decoding the new tokens alone would glue words
    // together or split characters.
    std::vector<int> ids(prompt.begin() + static_cast<std::ptrdiff_t>(prefix.size()), prompt.end());
    const std::string prompt_text = tokenizer.decode(ids);
    std::printf("%s", prompt_text.c_str());
    std::fflush(stdout);
    size_t printed = prompt_text.size();
    auto flush_new_text = [&](bool final) {
      const std::string text = tokenizer.decode(ids);
      // Byte-fallback tokens of an unfinished character decode to U+FFFD until it is complete.
      const bool unfinished = text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
      if (text.size() > printed && (final || !unfinished)) {
        std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
        std::fflush(stdout);
        printed = text.size();
      }
    };
    // The engine's cache holds just this generation (an imported model's context may be long).
    EngineOptions engine_options;
    engine_options.context = std::min<int64_t>(loaded.recipe.model.max_seq_len,
                                               static_cast<int64_t>(prompt.size()) + args->options.max_new_tokens);
    auto engine = make_engine(loaded, engine_options);
    generate(*engine, 0, prompt, args->options, [&](int64_t token) {
      if (token == tokenizer.eos_id() && !args->ignore_eos) return;
      ids.push_back(static_cast<int>(token));
      flush_new_text(false);
    });
    flush_new_text(true);
    std::printf("\n");
  });
}

}  // namespace loom::cli
