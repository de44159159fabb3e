#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/data/corpus.h"
#include "loom/data/lm_data.h"
#include "loom/data/tasks.h"
#include "loom/train/checkpoint.h"
#include "loom/train/train_step.h"

namespace loom::cli {

void print_task_score(const std::string& split, const TaskScore& score, bool classification, double majority) {
  if (classification) {
    std::printf("%s accuracy %.1f%% (%lld of %lld examples), loss %.4f; always the majority class: %.1f%%\n",
                split.c_str(), 100 * score.exact_match, static_cast<long long>(score.exact),
                static_cast<long long>(score.examples), score.loss, 100 * majority);
  } else {
    std::printf("%s exact match %.1f%% (%lld of %lld examples), token accuracy %.1f%%, loss %.4f\n", split.c_str(),
                100 * score.exact_match, static_cast<long long>(score.exact), static_cast<long long>(score.examples),
                100 * score.token_accuracy, score.loss);
  }
}

void add_eval(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string checkpoint;
    std::string split = "test";
    int max_batches = 0;
    int batch_size = 8;
  };
  auto args = std::make_shared<Args>();
  app.add_option("checkpoint", args->checkpoint, "checkpoint or run directory")->required();
  app.add_option("--split", args->split, "held-out split")->check(CLI::IsMember({"test", "valid"}));
  app.add_option("--max-batches", args->max_batches, "evaluate at most this many batches (0 = the whole split)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", args->batch_size, "windows (tasks: examples) per batch")->check(CLI::PositiveNumber);
  app.callback([args, &global] {
    configure_threads(global.threads);
    auto loaded = load_checkpoint(args->checkpoint);
    const auto& recipe = loaded.recipe;
    if (!recipe.task.is_lm()) {  // regenerate the held-out split from the recipe's task.seed
      const TaskData data(recipe.task);
      auto batches = to_batches(data.split_batches(args->split, args->batch_size));
      if (args->max_batches > 0 && static_cast<int>(batches.size()) > args->max_batches) batches.resize(args->max_batches);
      std::printf("checkpoint %s (step %lld), task %s\n", loaded.dir.c_str(), static_cast<long long>(loaded.state.step),
                  recipe.task.name.c_str());
      const bool classification = data.task().n_classes() > 0;
      print_task_score(args->split, evaluate_task(loaded.model, batches, /*bf16=*/false), classification,
                       classification ? data.majority_baseline(args->split).second : 0.0);
      return;
    }
    // Encode the split with the checkpoint's own tokenizer, whatever the data cache holds.
    const CorpusFiles files = fetch_corpus(recipe.data.corpus, recipe.data.dir);
    const std::string text = args->split == "test" ? files.test : files.valid;
    const auto tokens_path = std::filesystem::temp_directory_path() /
                             fmt::format("loom-eval-{}-{}.bin", getpid(), args->split);
    encode_text_file(loaded.tokenizer, text, tokens_path.string());
    TokenStream tokens(tokens_path.string());
    std::filesystem::remove(tokens_path);  // the mapping stays valid
    LMBatcher batcher(tokens, args->batch_size, static_cast<int>(recipe.model.max_seq_len));
    const auto batches = to_batches(batcher.eval_batches(args->max_batches));
    int64_t evaluated = 0;
    for (const auto& batch : batches) evaluated += batch.targets.numel();
    const double loss = evaluate_loss(loaded.model, batches, /*bf16=*/false);
    std::printf("checkpoint %s (step %lld)\n%s split: %lld tokens evaluated\nloss %.4f nats/token, perplexity %.2f\n"
                "unigram entropy of the split's own tokens %.4f nats/token\n",
                loaded.dir.c_str(), static_cast<long long>(loaded.state.step), args->split.c_str(),
                static_cast<long long>(evaluated), loss, std::exp(loss), unigram_entropy(tokens));
  });
}

}  // namespace loom::cli
