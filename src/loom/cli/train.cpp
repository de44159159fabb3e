#include <spdlog/spdlog.h>

#include "loom/checkpoint/checkpoint.h"
#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/infer/generate.h"
#include "loom/train/trainer.h"

namespace loom::cli {

void add_train(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string recipe;
    std::vector<std::string> overrides;
    TrainOptions options;
    bool print_recipe = false;
  };
  auto args = std::make_shared<Args>();
  app.add_option("recipe", args->recipe, "recipe YAML (default: the built-in recipe)");
  app.add_option("--set", args->overrides, "override a recipe key, e.g. --set train.lr=1e-3 (repeatable)");
  app.add_option("--out", args->options.out_dir,
                 "run directory (default: runs/default; on resume: the checkpoint's run)");
  app.add_option("--steps", args->options.steps, "total optimizer steps (overrides train.steps)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--resume", args->options.resume, "continue exactly from a checkpoint or run directory");
  app.add_option("--stop-after", args->options.stop_after, "stop with a checkpoint after N steps of this invocation")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--print-recipe", args->print_recipe, "print the resolved recipe and exit");
  app.callback([args, &global] {
    if (!args->options.resume.empty() && (!args->recipe.empty() || !args->overrides.empty()))
      fail("--resume continues with the checkpoint's own recipe: drop the recipe and --set arguments");
    Recipe recipe = args->recipe.empty() ? parse_recipe("{}", "the built-in recipe", args->overrides)
                                         : load_recipe(args->recipe, args->overrides);
    if (args->print_recipe) {
      std::printf("%s", recipe_to_yaml(recipe).c_str());
      return;
    }
    configure_threads(global.threads);
    const TrainResult result = train(recipe, args->options);
    if (result.interrupted) return;
    if (result.test) {
      print_task_score("test", *result.test, recipe.model.arch == "encoder", result.majority_accuracy);
      std::printf("checkpoint: %s\n", result.checkpoint.c_str());
      return;
    }
    if (recipe.model.encoder_decoder()) {
      std::printf("validation loss %.4f nats/target token (perplexity %.2f)\ncheckpoint: %s\n", result.valid_loss,
                  std::exp(result.valid_loss), result.checkpoint.c_str());
      return;
    }
    std::printf(
        "validation loss %.4f nats/token (perplexity %.2f); unigram entropy of the training tokens "
        "%.4f nats/token\ncheckpoint: %s\n",
        result.valid_loss, std::exp(result.valid_loss), result.unigram_entropy, result.checkpoint.c_str());
    // A sample from the trained model, starting a new paragraph.
    auto loaded = load_checkpoint(result.checkpoint);
    GenerateOptions options;
    options.max_new_tokens = 120;
    options.stop_token = loaded.tokenizer.eos_id();
    options.sampling.temperature = 0.8;
    options.sampling.top_p = 0.95;
    options.sampling.seed = 1;
    auto tokens = generate(loaded.model, {loaded.tokenizer.eos_id()}, options);
    std::vector<int> ids(tokens.begin(), tokens.end());
    if (!ids.empty() && ids.back() == loaded.tokenizer.eos_id()) ids.pop_back();
    std::printf("sample: %s\n", loaded.tokenizer.decode(ids).c_str());
  });
}

}  // namespace loom::cli
