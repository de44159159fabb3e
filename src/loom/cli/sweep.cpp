// `loom sweep`: train a recipe at every LR of a grid, per variant, and summarize (train/sweep.h).
#include <cstdio>

#include <spdlog/spdlog.h>

#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/train/sweep.h"

namespace loom::cli {

void add_sweep(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string lr;
    std::vector<std::string> variants;
    SweepOptions options;
  };
  auto args = std::make_shared<Args>();
  app.add_option("recipe", args->options.recipe, "recipe YAML")->required();
  app.add_option("--lr", args->lr,
                 "learning rates: A:B:N (N log-spaced from A to B, e.g. 3e-4:3e-1:7) or a list 1e-3,3e-3")
      ->required();
  // One value per occurrence, so a variant never swallows the recipe argument after it.
  app.add_option("--variant", args->variants,
                 "NAME=section.key=value,...: a variant with its own recipe overrides (repeatable; default: one "
                 "variant 'base' without overrides)")
      ->allow_extra_args(false);
  app.add_option("--set", args->options.overrides,
                 "override a recipe key in every variant, e.g. --set train.steps=500 (repeatable)")
      ->allow_extra_args(false);
  app.add_option("--steps", args->options.steps, "optimizer steps of every run (overrides train.steps)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--out", args->options.out_dir, "sweep directory; re-running with it skips finished runs")->required();
  app.callback([args, &global] {
    args->options.lrs = parse_lr_grid(args->lr);
    for (const auto& text : args->variants) args->options.variants.push_back(parse_variant(text));
    configure_threads(global.threads);
    const SweepResults results = run_sweep(args->options);
    if (results.interrupted) {
      spdlog::info("sweep stopped; run the same command again to continue it");
      return;
    }
    std::printf("%s\n%s/{sweep.md,results.json,sweep.svg}: %d runs trained now, %d from before\n",
                sweep_markdown(results).c_str(), args->options.out_dir.c_str(), results.trained, results.reused);
  });
}

}  // namespace loom::cli
