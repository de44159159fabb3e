#pragma once
// loom's log: what the library reports (the engine it picked, data it built, training progress)
// goes to the spdlog logger named "loom", which writes to stderr, so that a program linking loom
// keeps its stdout to itself. A program routes or silences it by registering its own logger
// under that name before its first call into loom (as cli/main.cpp does) or through
// spdlog::get("loom").
namespace spdlog {
class logger;
}

namespace loom {

spdlog::logger& logger();

}  // namespace loom
