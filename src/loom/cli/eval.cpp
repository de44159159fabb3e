#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "loom/checkpoint/checkpoint.h"
#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/data/corpus.h"
#include "loom/data/lm_data.h"
#include "loom/data/tasks.h"
#include "loom/data/translation_data.h"
#include "loom/eval/metrics.h"
#include "loom/infer/translate.h"
#include "loom/io/fs.h"
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

namespace {

// Encoder-decoders: the loss of the split's usable pairs, then every source line translated
// (empty lines give empty translations) and scored against its reference.
void eval_translation(LoadedModel& loaded, const std::string& split, int batch_size, const SearchOptions& search,
                      const std::string& output) {
  const auto& recipe = loaded.recipe;
  const ParallelFiles files =
      find_parallel_files(recipe.data.corpus, recipe.data.dir, recipe.task.src, recipe.task.tgt);
  const TranslationSplit data =
      encode_split(loaded.tokenizer, split == "test" ? files.test_src : files.valid_src,
                   split == "test" ? files.test_tgt : files.valid_tgt, recipe.model.max_seq_len);
  std::vector<Batch> batches;
  const int64_t bos = loaded.tokenizer.bos_id(), eos = loaded.tokenizer.eos_id();
  for (const auto& indices : length_batches(data.pairs, 4096, 0)) {
    auto b = collate_pairs(data.pairs, indices, bos, eos);
    batches.push_back(Batch{b.inputs, b.targets, b.source});
  }
  const double loss = evaluate_loss(loaded.model, batches, /*bf16=*/false);

  // Translate in batches of similar source length.
  const size_t n = data.src_text.size();
  std::vector<std::vector<int64_t>> sources(n);
  for (size_t i = 0; i < n; ++i)
    for (int id : loaded.tokenizer.encode(data.src_text[i])) sources[i].push_back(id);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return sources[a].size() < sources[b].size(); });
  std::vector<std::string> hyps(n);
  int64_t target_tokens = 0;
  SearchOptions options = search;
  options.bos = bos, options.eos = eos, options.unk = 0;
  const auto start = std::chrono::steady_clock::now();
  for (size_t first = 0; first < n; first += static_cast<size_t>(batch_size)) {
    std::vector<size_t> rows;
    std::vector<std::vector<int64_t>> batch;
    for (size_t k = first; k < std::min(n, first + static_cast<size_t>(batch_size)); ++k) {
      if (sources[order[k]].empty()) continue;  // an empty line translates to an empty line
      rows.push_back(order[k]);
      batch.push_back(sources[order[k]]);
    }
    if (batch.empty()) continue;
    const auto results = translate_batch(loaded.model, batch, options);
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto& tokens = results[r].front().tokens;
      target_tokens += static_cast<int64_t>(tokens.size());
      hyps[rows[r]] = loaded.tokenizer.decode(std::vector<int>(tokens.begin(), tokens.end()));
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!output.empty()) {
    std::string text;
    for (const auto& h : hyps) text += h + "\n";
    write_file_atomic(output, text);
  }
  const BleuScore bleu = corpus_bleu(hyps, data.tgt_text);
  const ChrfScore chrf = corpus_chrf(hyps, data.tgt_text);
  std::printf(
      "checkpoint %s (step %lld), %s %s->%s\n%s split: %zu pairs (%lld usable for the loss)\n"
      "loss %.4f nats/target token, perplexity %.2f\n"
      "beam %lld, lenpen %.2f, batch %d%s: %lld target tokens in %.1f s (%.1f tokens/s)\n%s\n%s\n",
      loaded.dir.c_str(), static_cast<long long>(loaded.state.step), recipe.data.corpus.c_str(),
      recipe.task.src.c_str(), recipe.task.tgt.c_str(), split.c_str(), n, static_cast<long long>(data.pairs.size()),
      loss, std::exp(loss), static_cast<long long>(options.beam), options.lenpen, batch_size,
      options.bf16 ? ", bf16" : "", static_cast<long long>(target_tokens), seconds,
      static_cast<double>(target_tokens) / seconds, bleu.format().c_str(), chrf.format().c_str());
}

}  // namespace

void add_eval(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string checkpoint;
    std::string split = "test";
    int max_batches = 0;
    int batch_size = 8;
    SearchOptions search;
    std::string output;
  };
  auto args = std::make_shared<Args>();
  app.add_option("checkpoint", args->checkpoint, "checkpoint or run directory")->required();
  app.add_option("--split", args->split, "held-out split")->check(CLI::IsMember({"test", "valid"}));
  app.add_option("--max-batches", args->max_batches, "evaluate at most this many batches (0 = the whole split)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", args->batch_size,
                 "windows (tasks: examples; translation: sentences, default 32) per batch")
      ->check(CLI::PositiveNumber);
  app.add_option("--beam", args->search.beam, "translation: beam size (1 = greedy)")->check(CLI::PositiveNumber);
  app.add_option("--lenpen", args->search.lenpen, "translation: length penalty (score / length^lenpen)");
  app.add_flag("--bf16", args->search.bf16, "translation: matmuls in bf16 (autocast)");
  app.add_option("--output", args->output, "translation: write the translations here, one line per source");
  app.callback([args, &global, &app] {
    configure_threads(global.threads);
    auto loaded = load_checkpoint(args->checkpoint);
    const auto& recipe = loaded.recipe;
    if (recipe.task.is_translation()) {
      eval_translation(loaded, args->split, app.count("--batch-size") ? args->batch_size : 32, args->search,
                       args->output);
      return;
    }
    if (!recipe.task.is_lm()) {  // regenerate the held-out split from the recipe's task.seed
      const TaskData data(recipe.task);
      auto batches = to_batches(data.split_batches(args->split, args->batch_size));
      if (args->max_batches > 0 && static_cast<int>(batches.size()) > args->max_batches)
        batches.resize(args->max_batches);
      std::printf("checkpoint %s (step %lld), task %s\n", loaded.dir.c_str(), static_cast<long long>(loaded.state.step),
                  recipe.task.name.c_str());
      const bool classification = data.task().n_classes() > 0;
      print_task_score(args->split, evaluate_task(loaded.model, batches, /*bf16=*/false), classification,
                       classification ? data.majority_baseline(args->split).second : 0.0);
      return;
    }
    // Encode the split with the checkpoint's own tokenizer, whatever the data cache holds.
    require_tokenizer(loaded, "eval");  // an import may carry a vocabulary loom cannot run yet
    const CorpusFiles files = fetch_corpus(recipe.data.corpus, recipe.data.dir);
    const std::string text = args->split == "test" ? files.test : files.valid;
    const auto tokens_path =
        std::filesystem::temp_directory_path() / fmt::format("loom-eval-{}-{}.bin", getpid(), args->split);
    encode_text_file(loaded.tokenizer, text, tokens_path.string());
    TokenStream tokens(tokens_path.string());
    std::filesystem::remove(tokens_path);  // the mapping stays valid
    LMBatcher batcher(tokens, args->batch_size, static_cast<int>(recipe.model.max_seq_len));
    const auto batches = to_batches(batcher.eval_batches(args->max_batches));
    int64_t evaluated = 0;
    for (const auto& batch : batches) evaluated += batch.targets.numel();
    const double loss = evaluate_loss(loaded.model, batches, /*bf16=*/false);
    if (!loaded.quantization.empty())
      std::printf("quantized weights: %s (%zu tensors)\n", loaded.quantization.c_str(), loaded.quantized.size());
    std::printf(
        "checkpoint %s (step %lld)\n%s split: %lld tokens evaluated\nloss %.4f nats/token, perplexity %.2f\n"
        "unigram entropy of the split's own tokens %.4f nats/token\n",
        loaded.dir.c_str(), static_cast<long long>(loaded.state.step), args->split.c_str(),
        static_cast<long long>(evaluated), loss, std::exp(loss), unigram_entropy(tokens));
  });
}

}  // namespace loom::cli
