#include "loom/core/progress.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

namespace loom {

Progress::Progress(std::string label, int64_t start, int64_t total, int64_t every)
    : label_(std::move(label)),
      start_(start),
      total_(total),
      every_(std::max<int64_t>(1, every)),
      tty_(isatty(STDERR_FILENO) != 0),
      started_(std::chrono::steady_clock::now()) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

void Progress::update(int64_t done, const std::string& fields) {
  if (!tty_ && done % every_ != 0 && done != total_) return;
  const double elapsed = elapsed_seconds();
  const int64_t progressed = done - start_;
  const double eta = progressed > 0 ? elapsed / progressed * static_cast<double>(total_ - done) : 0;
  std::string bar;
  if (tty_) {
    const int width = 20;
    const int filled = total_ > 0 ? static_cast<int>(width * done / total_) : width;
    bar = "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
  }
  std::string line = fmt::format("{} {}{}/{} | {} | {} elapsed, ETA {}", label_, bar, done, total_, fields,
                                 format_duration(elapsed), format_duration(eta));
  if (tty_) {
    const size_t width = line.size();
    if (line.size() < last_width_) line += std::string(last_width_ - line.size(), ' ');
    last_width_ = width;
    std::fprintf(stderr, "\r%s", line.c_str());
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (tty_ && last_width_ > 0) std::fprintf(stderr, "\n");
  last_width_ = 0;
}

}  // namespace loom
