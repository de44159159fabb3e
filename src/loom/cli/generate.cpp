#include <cstdio>

#include "loom/checkpoint/checkpoint.h"
#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/infer/generate.h"

namespace loom::cli {

void add_sampling_options(CLI::App& app, SamplingOptions& options) {
  app.add_option("--temperature", options.temperature, "sampling temperature; 0 = greedy")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", options.top_k, "sample among the k likeliest tokens (0 = off)")
      ->check(CLI::NonNegativeNumber);
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
    args->options.stop_token = args->ignore_eos ? -1 : loaded.tokenizer.eos_id();
    generate_text(loaded, args->prompt, args->options, [](const std::string& text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    });
    std::printf("\n");
  });
}

}  // namespace loom::cli
