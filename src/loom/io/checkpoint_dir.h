// Checkpoint directories (<run_dir>/step-000120/ holding model.safetensors, config, tokenizer...),
// written atomically: files are staged in <run_dir>/.tmp-<name>-<pid>/ and the directory is
// renamed into place only when complete, so a crash never leaves a half-written step-* behind.
// Content-agnostic: what goes inside is the trainer's business.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace loom {

class CheckpointWriter {
 public:
  // Creates run_dir if needed and an empty staging dir; `name` is a plain directory name
  // such as "step-000120". One writer per name at a time within a process (the staging dir is
  // keyed by pid, and a stale one is removed).
  CheckpointWriter(std::string run_dir, std::string name);
  ~CheckpointWriter();  // removes the staging dir unless committed
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Path of `file` (a plain file name) inside the staging dir, for writers that need a path.
  std::string path(const std::string& file) const;
  // Writes bytes to staging/file, fsynced.
  void add(const std::string& file, std::string_view bytes);
  // fsyncs every file and the staging dir, renames it to <run_dir>/<name> (an existing one is
  // moved aside first and deleted after), fsyncs run_dir. Returns the final directory.
  std::string commit();

 private:
  std::string run_dir_, name_, staging_;
  bool committed_ = false;
};

// Committed "step-<digits>" directories of run_dir (full paths) sorted by step; empty if none.
std::vector<std::string> list_checkpoints(const std::string& run_dir);

// Deletes all but the last keep_last (>= 1) checkpoints.
void prune_checkpoints(const std::string& run_dir, int keep_last);

// A checkpoint dir (has model.safetensors) -> itself; a run dir -> its latest step-*;
// otherwise loom::Error "no checkpoint in ...".
std::string resolve_checkpoint(const std::string& path);

}  // namespace loom
