#include <cstdio>

#include "loom/cli/commands.h"
#include "loom/nn/blocks.h"

namespace loom::cli {

void add_blocks(CLI::App& app, const GlobalOptions&) {
  app.callback([] {
    blocks();
    for (const auto& info : block_catalogue())
      std::printf("%-9s %-11s %s\n%22s%s\n", info.family.c_str(), info.name.c_str(), info.description.c_str(),
                  "paper: ", info.paper.c_str());
  });
}

}  // namespace loom::cli
