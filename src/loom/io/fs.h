// Small POSIX file helpers for io/: whole-file reads, and writes that survive a crash.
// write_file_atomic is the building block for safetensors and checkpoint directories: a reader
// sees either the old file or the complete new one, never a torn write.
#pragma once
#include <string>
#include <string_view>

namespace loom {

// The whole file as bytes; loom::Error naming the path if it is missing or unreadable.
std::string read_file(const std::string& path);

// Writes `path.tmp.<pid>`, fsyncs it, renames it over `path`, fsyncs the parent directory.
// On failure the temp file is removed and loom::Error thrown; an existing `path` is untouched.
void write_file_atomic(const std::string& path, std::string_view bytes);

// fsync of a directory, so that renames and creations inside it are durable.
void fsync_dir(const std::string& dir);

// fsync of an existing regular file (for files other code wrote by path).
void fsync_file(const std::string& path);

}  // namespace loom
