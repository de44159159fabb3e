// The subcommands of `loom`: each registers its options on a CLI11 subcommand and runs a thin
// layer over the library. main.cpp holds the one table of them.
#pragma once
#include <CLI/CLI.hpp>

#include "loom/infer/sampler.h"
#include "loom/train/train_step.h"

namespace loom::cli {

struct GlobalOptions {
  int threads = 0;                // 0 = all cores
  std::vector<std::string> argv;  // the command line as given (the launcher of --nproc reruns it)
};

void add_train(CLI::App& app, const GlobalOptions& global);
void add_sweep(CLI::App& app, const GlobalOptions& global);
void add_search(CLI::App& app, const GlobalOptions& global);
void add_generate(CLI::App& app, const GlobalOptions& global);
void add_serve(CLI::App& app, const GlobalOptions& global);
void add_translate(CLI::App& app, const GlobalOptions& global);
void add_eval(CLI::App& app, const GlobalOptions& global);
void add_score(CLI::App& app, const GlobalOptions& global);
void add_data(CLI::App& app, const GlobalOptions& global);
void add_average(CLI::App& app, const GlobalOptions& global);
void add_blocks(CLI::App& app, const GlobalOptions& global);
void add_quantize(CLI::App& app, const GlobalOptions& global);
void add_export(CLI::App& app, const GlobalOptions& global);
void add_import(CLI::App& app, const GlobalOptions& global);

// --temperature, --top-k, --top-p, --seed (generate and translate share them).
void add_sampling_options(CLI::App& app, SamplingOptions& options);

// Prints a workbench task's held-out scores ("test exact match 97.3% (973 of 1000) ...").
void print_task_score(const std::string& split, const TaskScore& score, bool classification, double majority);

}  // namespace loom::cli
