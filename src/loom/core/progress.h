// A progress line for long loops: step/total, caller-supplied fields, rate and ETA. On a
// terminal it redraws one line; otherwise (logs, CI) it prints a line every `every` updates.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace loom {

class Progress {
 public:
  Progress(std::string label, int64_t start, int64_t total, int64_t every);
  // `done` units finished in total; `fields` e.g. "loss 3.21 | 12.3k tok/s".
  void update(int64_t done, const std::string& fields);
  void finish();
  double elapsed_seconds() const;

 private:
  std::string label_;
  int64_t start_, total_, every_;
  bool tty_;
  std::chrono::steady_clock::time_point started_;
  size_t last_width_ = 0;
};

// "1h02m", "4m12s", "37s"
std::string format_duration(double seconds);

}  // namespace loom
