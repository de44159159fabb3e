#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "loom/cli/commands.h"
#include "loom/convert/quantize_model.h"
#include "loom/core/runtime.h"
#include "loom/data/corpus.h"
#include "loom/data/lm_data.h"

namespace loom::cli {

namespace {

// GPTQ's calibration windows: `sequences` random windows of `length` tokens from a text file
// (one paragraph per line), encoded with the checkpoint's tokenizer.
torch::Tensor calibration_windows(const LoadedModel& loaded, const std::string& text_file, int sequences, int length,
                                  uint64_t seed) {
  const auto path = std::filesystem::temp_directory_path() / fmt::format("loom-calib-{}.bin", getpid());
  encode_text_file(loaded.tokenizer, text_file, path.string());
  TokenStream tokens(path.string());
  std::filesystem::remove(path);  // the mapping stays valid
  if (tokens.size() < length + 1)
    fail("calibration text {} has {} tokens; GPTQ needs at least {}", text_file, tokens.size(), length + 1);
  LMBatcher batcher(tokens, sequences, length);
  return batcher.sample(seed, 0).first;
}

}  // namespace

void add_quantize(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string checkpoint, method, calib, out;
    int calib_sequences = 64;
    int calib_length = 0;
    uint64_t seed = 0;
    GptqOptions gptq;
  };
  auto args = std::make_shared<Args>();
  app.add_option("checkpoint", args->checkpoint, "float checkpoint or run directory")->required();
  app.add_option("--method", args->method,
                 "int8 (per-row), q4 (Q4_0 groups of 32, round to nearest) or gptq (Q4_0 by GPTQ)")
      ->required()
      ->check(CLI::IsMember({"int8", "q4", "gptq"}));
  app.add_option("--out", args->out, "the quantized checkpoint directory to write")->required();
  app.add_option("--calib", args->calib,
                 "gptq: calibration text, one paragraph per line (default: the corpus's train split)");
  app.add_option("--calib-sequences", args->calib_sequences, "gptq: calibration windows")->check(CLI::PositiveNumber);
  app.add_option("--calib-length", args->calib_length, "gptq: tokens per window (0 = the model's context)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", args->seed, "gptq: which random windows of the text");
  app.add_option("--damp", args->gptq.damp, "gptq: dampening, a fraction of the Hessian's mean diagonal")
      ->check(CLI::PositiveNumber);
  app.add_option("--block-size", args->gptq.block_size, "gptq: columns updated lazily together (a multiple of 32)")
      ->check(CLI::PositiveNumber);
  app.callback([args, &global] {
    configure_threads(global.threads);
    auto loaded = load_checkpoint(args->checkpoint);
    const QuantMethod method = parse_quant_method(args->method);
    torch::Tensor calibration;
    if (method == QuantMethod::kGptq) {
      require_tokenizer(loaded, "gptq calibration");
      std::string text = args->calib;
      if (text.empty()) text = fetch_corpus(loaded.recipe.data.corpus, loaded.recipe.data.dir).train;
      const int length =
          args->calib_length > 0 ? args->calib_length : static_cast<int>(loaded.recipe.model.max_seq_len);
      calibration = calibration_windows(loaded, text, args->calib_sequences, length, args->seed);
      spdlog::info("gptq: calibrating on {} windows of {} tokens from {}", calibration.size(0), calibration.size(1),
                   text);
    }
    std::vector<QuantizeStats> stats;
    const auto weights = quantize_model(loaded, method, calibration, args->gptq, &stats);
    for (const auto& s : stats)
      spdlog::info("{}: output error RTN {:.4g}, GPTQ {:.4g} ({:.2f}x lower)", s.name, s.rtn_error, s.gptq_error,
                   s.rtn_error / std::max(s.gptq_error, 1e-30));
    int64_t stored = 0, original = 0;
    for (const auto& [name, q] : weights) {
      stored += q.q.numel() * q.q.element_size() + (q.scale.defined() ? q.scale.numel() * 4 : 0);
      original += q.rows * q.cols * 4;
    }
    const std::string dir = save_quantized_checkpoint(loaded, weights, method, args->out);
    std::printf("%s: %zu weights quantized with %s, %.1f MB -> %.1f MB\n", dir.c_str(), weights.size(),
                method_name(method), original / 1e6, stored / 1e6);
  });
}

}  // namespace loom::cli
