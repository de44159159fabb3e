// loom: one binary, one table of subcommands.
#include <cstdio>
#include <cstring>

#include <spdlog/spdlog.h>

#include "loom/cli/commands.h"
#include "loom/core/error.h"
#include "loom/core/log.h"
#include "loom/core/runtime.h"

namespace {

struct Command {
  const char* name;
  const char* help;
  void (*add)(CLI::App&, const loom::cli::GlobalOptions&);
};

const Command kCommands[] = {
    {"train", "train a model from a recipe (default: the built-in recipe), or resume a run", loom::cli::add_train},
    {"sweep", "train a recipe at each LR of a grid, per variant: table, LR sensitivity, SVG chart",
     loom::cli::add_sweep},
    {"search", "architecture search: supernet, extract, latency, evolve, proxies (HAT; training-free NAS)",
     loom::cli::add_search},
    {"generate", "continue a prompt with a trained model", loom::cli::add_generate},
    {"serve", "serve a language model over HTTP (OpenAI-compatible, continuous batching)", loom::cli::add_serve},
    {"translate", "translate stdin lines with an encoder-decoder: beam search, greedy or sampling",
     loom::cli::add_translate},
    {"eval", "held-out loss and perplexity, or a workbench task's metric, of a trained model", loom::cli::add_eval},
    {"score", "corpus BLEU and chrF of hypotheses against references, as sacreBLEU computes them",
     loom::cli::add_score},
    {"average", "average the weights of checkpoints (e.g. a run's last N) into one checkpoint", loom::cli::add_average},
    {"quantize", "quantize a checkpoint's linear weights: int8 per row, 4-bit Q4_0 by rounding or by GPTQ",
     loom::cli::add_quantize},
    {"export", "write a LLaMA-style checkpoint as GGUF (llama.cpp) or a Hugging Face LLaMA directory",
     loom::cli::add_export},
    {"import", "turn a GGUF file or a Hugging Face LLaMA directory into a loom checkpoint", loom::cli::add_import},
    {"data", "fetch a corpus, train its tokenizer and encode its splits", loom::cli::add_data},
    {"blocks", "list every registered block with its family, description and paper", loom::cli::add_blocks},
};

}  // namespace

int main(int argc, char** argv) {
  // Decoding commands keep OpenMP's threads spinning between the many short kernel calls of a
  // token; a server spins a while, then sleeps between requests.
  auto policy = loom::WaitPolicy::kPassive;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0) ++i;  // skip its value
    else if (argv[i][0] != '-') {                     // the subcommand
      if (std::strcmp(argv[i], "generate") == 0) policy = loom::WaitPolicy::kActive;
      if (std::strcmp(argv[i], "serve") == 0) policy = loom::WaitPolicy::kSpinThenSleep;
      break;
    }
  }
  loom::ensure_runtime_environment(argc, argv, policy);
  // Logs and progress go to stderr; stdout carries results (generated text, scores).
  loom::logger();  // the library's stderr logger, made the CLI's own too
  spdlog::set_default_logger(spdlog::get("loom"));
  spdlog::set_pattern("[%H:%M:%S] %^%l%$: %v");
  CLI::App app{"loom: build, train and run Transformer-family models"};
  app.require_subcommand(1);
  app.fallthrough();
  loom::cli::GlobalOptions global;
  global.argv.assign(argv, argv + argc);
  app.add_option("--threads", global.threads, "threads for libtorch, OpenMP and OpenBLAS (0 = all cores)")
      ->check(CLI::NonNegativeNumber);
  for (const auto& command : kCommands) command.add(*app.add_subcommand(command.name, command.help), global);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const loom::Error& e) {
    std::fprintf(stderr, "loom: error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "loom: error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loom: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
