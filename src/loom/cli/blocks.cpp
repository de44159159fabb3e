#include <cstdio>

#include <fmt/ranges.h>

#include "loom/cli/commands.h"
#include "loom/nn/blocks.h"

namespace loom::cli {

void add_blocks(CLI::App& app, const GlobalOptions&) {
  app.callback([] {
    blocks();
    for (const auto& info : block_catalogue())
      std::printf("%-9s %-16s %s\n%27s%s%s\n", info.family.c_str(), info.name.c_str(), info.description.c_str(),
                  "paper: ", info.paper.c_str(),
                  info.traits.empty() ? "" : fmt::format("\n{:>27}{}", "traits: ", fmt::join(info.traits, ", ")).c_str());
  });
}

}  // namespace loom::cli
