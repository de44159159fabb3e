#include <thread>

#include <spdlog/spdlog.h>

#include "loom/checkpoint/checkpoint.h"
#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/dist/dist.h"
#include "loom/infer/generate.h"
#include "loom/train/trainer.h"

namespace loom::cli {

void add_train(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string recipe;
    std::vector<std::string> overrides;
    TrainOptions options;
    bool print_recipe = false;
    int nproc = 1;
    int dist_timeout = 600;
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
  app.add_option("--nproc", args->nproc,
                 "worker processes on this machine: train.tensor_parallel slices x data-parallel replicas "
                 "(--threads is then per worker; default: the cores shared out). Across machines: run one `loom train` "
                 "per host with torchrun's RANK, "
                 "WORLD_SIZE, MASTER_ADDR, MASTER_PORT (docs/distributed.md)")
      ->check(CLI::PositiveNumber);
  app.add_option("--dist-timeout", args->dist_timeout,
                 "seconds the ranks wait for each other (rendezvous and each collective)")
      ->check(CLI::PositiveNumber);
  app.callback([args, &global] {
    if (!args->options.resume.empty() && (!args->recipe.empty() || !args->overrides.empty()))
      fail("--resume continues with the checkpoint's own recipe: drop the recipe and --set arguments");
    Recipe recipe = args->recipe.empty() ? parse_recipe("{}", "the built-in recipe", args->overrides)
                                         : load_recipe(args->recipe, args->overrides);
    if (args->print_recipe) {
      std::printf("%s", recipe_to_yaml(recipe).c_str());
      return;
    }
    const DistEnv env = dist_env_from_environment();
    if (args->options.resume.empty()) check_process_count(recipe.train, args->nproc > 1 ? args->nproc : env.world_size);
    if (args->nproc > 1) {
      if (env.distributed())
        fail("--nproc starts its own workers: under torchrun or another launcher (WORLD_SIZE={}) leave it out",
             env.world_size);
      std::vector<std::string> argv;  // this command line without --nproc
      for (size_t i = 0; i < global.argv.size(); ++i) {
        if (global.argv[i] == "--nproc") ++i;
        else if (global.argv[i].rfind("--nproc=", 0) != 0) argv.push_back(global.argv[i]);
      }
      const int cores = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
      const int threads = global.threads > 0 ? global.threads : std::max(1, cores / args->nproc);
      if (launch_local_workers(args->nproc, argv, threads) != 0) fail("training failed: see the workers' errors above");
      return;
    }
    std::unique_ptr<Communicator> dist;
    if (env.distributed()) {
      // Every rank's lines say whose they are; ranks other than 0 log only warnings and errors.
      spdlog::set_pattern(fmt::format("[%H:%M:%S] rank {} %^%l%$: %v", env.rank));
      if (env.rank != 0) spdlog::set_level(spdlog::level::warn);
      dist = std::make_unique<Communicator>(env, std::chrono::seconds(args->dist_timeout));
      args->options.dist = dist.get();
    }
    configure_threads(global.threads);
    const TrainResult result = train(recipe, args->options);
    if (result.interrupted || env.rank != 0) return;
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
