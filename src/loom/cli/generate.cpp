#include <cstdio>

#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/infer/generate.h"
#include "loom/train/checkpoint.h"

namespace loom::cli {

void add_generate(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string checkpoint;
    std::string prompt;
    GenerateOptions options;
  };
  auto args = std::make_shared<Args>();
  args->options.max_new_tokens = 200;
  app.add_option("checkpoint", args->checkpoint, "checkpoint or run directory")->required();
  app.add_option("--prompt", args->prompt, "text to continue (empty: start a new paragraph)");
  app.add_option("--max-new-tokens", args->options.max_new_tokens, "tokens to generate at most")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", args->options.sampling.temperature, "sampling temperature; 0 = greedy")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", args->options.sampling.top_k, "sample among the k likeliest tokens (0 = off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", args->options.sampling.top_p, "sample within the smallest set of this mass (1 = off)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", args->options.sampling.seed, "sampling seed");
  app.callback([args, &global] {
    configure_threads(global.threads);
    auto loaded = load_checkpoint(args->checkpoint);
    const auto& tokenizer = loaded.tokenizer;
    // Training text is paragraphs each ended by eos, so eos first puts the model at the start
    // of a paragraph, and generation stops at the paragraph's end.
    std::vector<int64_t> prompt{tokenizer.eos_id()};
    for (int id : tokenizer.encode(args->prompt)) prompt.push_back(id);
    if (static_cast<int64_t>(prompt.size()) >= loaded.recipe.model.max_seq_len)
      fail("the prompt is {} tokens but the model's context is {} tokens", prompt.size(),
           loaded.recipe.model.max_seq_len);
    args->options.stop_token = tokenizer.eos_id();
    std::printf("%s", args->prompt.c_str());
    std::fflush(stdout);
    // Decode the whole continuation each time and print what is new: a token may be part of a
    // multi-byte character, so the printed text only grows by complete pieces.
    std::vector<int> ids;
    size_t printed = 0;
    generate(loaded.model, prompt, args->options, [&](int64_t token) {
      if (token == tokenizer.eos_id()) return;
      ids.push_back(static_cast<int>(token));
      const std::string text = tokenizer.decode(ids);
      if (text.size() > printed && (text.back() & 0xC0) != 0x80) {
        std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
        std::fflush(stdout);
        printed = text.size();
      }
    });
    const std::string text = tokenizer.decode(ids);
    if (text.size() > printed) std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
    std::printf("\n");
  });
}

}  // namespace loom::cli
