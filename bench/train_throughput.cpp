// Training throughput of loom on a recipe (default: recipes/bench/gpt-384.yaml) with random
// tokens: prints one JSON line with tokens/s. bench/train_throughput.sh runs it beside the
// PyTorch peer (bench/train_throughput_peer.py) and prints the ratio.
//
//   train_throughput RECIPE THREADS PRECISION WARMUP STEPS
// With LOOM_PROFILE=FILE the timed steps run under libtorch's profiler, which writes a
// chrome://tracing file of every operator (bench/profile_summary.py attributes the step's time
// by operator; docs/performance.md); its tokens/s then include the profiler's overhead.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include <torch/csrc/autograd/profiler_legacy.h>

#include "loom/core/runtime.h"
#include "loom/train/train_step.h"

int main(int argc, char** argv) {
  loom::ensure_runtime_environment(argc, argv);
  try {
    const std::string path = argc > 1 ? argv[1] : "recipes/bench/gpt-384.yaml";
    const int threads = argc > 2 ? std::atoi(argv[2]) : 0;
    const std::string precision = argc > 3 ? argv[3] : "bf16";
    const int warmup = argc > 4 ? std::atoi(argv[4]) : 3;
    const int steps = argc > 5 ? std::atoi(argv[5]) : 10;
    auto recipe = loom::load_recipe(path, {"train.precision=" + precision});
    const int used_threads = loom::configure_threads(threads);
    torch::manual_seed(0);
    loom::Model model(recipe.model);
    loom::TrainStep trainer(model, recipe.train);
    const auto& c = recipe.model;
    auto batch = [&](int64_t) {
      auto tokens = torch::randint(c.vocab_size, {recipe.train.batch_size, c.max_seq_len + 1});
      return loom::Batch{tokens.narrow(1, 0, c.max_seq_len), tokens.narrow(1, 1, c.max_seq_len)};
    };
    for (int i = 0; i < warmup; ++i) trainer.run(i, batch);
    const char* profile = std::getenv("LOOM_PROFILE");
    auto profiler =
        profile ? std::make_unique<torch::autograd::profiler::RecordProfile>(std::string(profile)) : nullptr;
    const auto start = std::chrono::steady_clock::now();
    double loss = 0;
    for (int i = 0; i < steps; ++i) loss = trainer.run(warmup + i, batch).loss;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    profiler.reset();  // writes the trace
    const double tokens =
        static_cast<double>(steps) * recipe.train.batch_size * recipe.train.grad_accum * c.max_seq_len;
    std::printf(
        "{\"impl\": \"loom\", \"threads\": %d, \"precision\": \"%s\", \"params\": %lld, "
        "\"tokens_per_s\": %.1f, \"step_ms\": %.1f, \"final_loss\": %.4f}\n",
        used_threads, precision.c_str(), static_cast<long long>(model->num_parameters()), tokens / seconds,
        1000.0 * seconds / steps, loss);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_throughput: error: %s\n", e.what());
    return 1;
  }
}
