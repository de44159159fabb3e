#include "loom/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <mutex>

namespace loom {

spdlog::logger& logger() {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto registered = spdlog::get("loom")) return *registered;
  return *spdlog::stderr_color_mt("loom");
}

}  // namespace loom
