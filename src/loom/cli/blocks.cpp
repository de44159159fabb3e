#include <cstdio>

#include <fmt/ranges.h>

#include "loom/cli/commands.h"
#include "loom/nn/blocks.h"

namespace loom::cli {

void add_blocks(CLI::App& app, const GlobalOptions&) {
  app.callback([] {
    blocks();
    for (const auto& info : block_catalogue()) {
      std::string extra;
      if (!info.traits.empty()) extra += fmt::format("\n{:>27}{}", "traits: ", fmt::join(info.traits, ", "));
      if (!info.options.empty())
        extra += fmt::format("\n{:>27}model.{}", "options: ", fmt::join(info.options, ", model."));
      extra += fmt::format("\n{:>27}{}", "fast engine: ", *info.runs_on_fast_engine ? "yes" : "no (reference engine)");
      std::printf("%-9s %-16s %s\n%27s%s%s\n", info.family.c_str(), info.name.c_str(), info.description.c_str(),
                  "paper: ", info.paper.c_str(), extra.c_str());
    }
  });
}

}  // namespace loom::cli
