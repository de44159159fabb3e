#include <cstdio>

#include "loom/checkpoint/checkpoint.h"
#include "loom/cli/commands.h"
#include "loom/io/checkpoint_dir.h"

namespace loom::cli {

void add_average(CLI::App& app, const GlobalOptions&) {
  struct Args {
    std::vector<std::string> inputs;
    int last = 0;
    std::string out;
  };
  auto args = std::make_shared<Args>();
  app.add_option("checkpoints", args->inputs, "checkpoint directories, or one run directory with --last")->required();
  app.add_option("--last", args->last, "average the last N checkpoints of the run directory")
      ->check(CLI::PositiveNumber);
  app.add_option("--out", args->out, "the averaged checkpoint directory to write")->required();
  app.callback([args] {
    std::vector<std::string> checkpoints = args->inputs;
    if (args->last > 0) {
      if (args->inputs.size() != 1) fail("--last takes one run directory, got {} paths", args->inputs.size());
      checkpoints = list_checkpoints(args->inputs[0]);
      if (static_cast<int>(checkpoints.size()) < args->last)
        fail("{} holds {} checkpoints, fewer than --last {}", args->inputs[0], checkpoints.size(), args->last);
      checkpoints.erase(checkpoints.begin(), checkpoints.end() - args->last);
    }
    const std::string dir = average_checkpoints(checkpoints, args->out);
    std::printf("averaged %zu checkpoints into %s\n", checkpoints.size(), dir.c_str());
  });
}

}  // namespace loom::cli
