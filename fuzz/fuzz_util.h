// Shared by the libFuzzer harnesses (scripts/fuzz.sh builds and runs them; docs/reliability.md).
// A harness feeds arbitrary bytes to one parser: a loom::Error (a clear one-line refusal) is the
// expected answer to bad input; anything else — a crash, a sanitizer report, another exception, a
// hang, unbounded memory — is a finding.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "loom/core/error.h"

namespace fuzz {

// A scratch directory for this process, removed at exit.
inline const std::string& scratch() {
  // Never destroyed: the exit handler that removes it runs after static destructors may have.
  static const std::string* dir = [] {
    auto* d = new std::string(
        (std::filesystem::temp_directory_path() / ("loom-fuzz-" + std::to_string(::getpid()))).string());
    std::filesystem::create_directories(*d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch(), ec);
    });
    return d;
  }();
  return *dir;
}

inline void write(const std::string& path, std::string_view bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Splits the input at each occurrence of `separator`: how one input carries several files.
inline std::vector<std::string_view> split(std::string_view data, std::string_view separator) {
  std::vector<std::string_view> parts;
  for (size_t at = 0;;) {
    const size_t next = data.find(separator, at);
    parts.push_back(data.substr(at, next == std::string_view::npos ? std::string_view::npos : next - at));
    if (next == std::string_view::npos) return parts;
    at = next + separator.size();
  }
}

// Runs f; a loom::Error is the expected refusal of bad input.
template <class F>
void refuses_cleanly(F f) {
  try {
    f();
  } catch (const loom::Error&) {}
}

}  // namespace fuzz
