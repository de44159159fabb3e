// Atomic checkpoint directories; see checkpoint.h.
#include "loom/io/checkpoint_dir.h"

#include <fcntl.h>  // AT_FDCWD
#include <signal.h>
#include <stdio.h>  // renameat2
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <optional>

#include "loom/core/error.h"
#include "loom/io/fs.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

// Rejects names that would escape or nest inside the directory they are joined to.
void check_plain_name(const std::string& name, const char* what) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
    fail("invalid checkpoint {} name '{}': must be a plain name without '/'", what, name);
}

// The step of a "step-<digits>" name, or nullopt for anything else (.tmp-*, other files).
std::optional<uint64_t> step_of(const std::string& name) {
  constexpr std::string_view kPrefix = "step-";
  if (name.size() <= kPrefix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0) return {};
  uint64_t step = 0;
  const char* end = name.data() + name.size();
  const auto [ptr, ec] = std::from_chars(name.data() + kPrefix.size(), end, step);
  if (ec != std::errc() || ptr != end) return {};
  return step;
}

// The pid a ".tmp-<name>-<pid>[.old]" or ".trash-<name>-<pid>" entry was made by, or 0.
pid_t maker_of(const std::string& entry) {
  if (entry.rfind(".tmp-", 0) != 0 && entry.rfind(".trash-", 0) != 0) return 0;
  std::string rest = entry;
  if (rest.size() > 4 && rest.compare(rest.size() - 4, 4, ".old") == 0) rest.resize(rest.size() - 4);
  const size_t dash = rest.rfind('-');
  if (dash == std::string::npos) return 0;
  long pid = 0;
  const auto [ptr, ec] = std::from_chars(rest.data() + dash + 1, rest.data() + rest.size(), pid);
  return ec == std::errc() && ptr == rest.data() + rest.size() && pid > 0 ? static_cast<pid_t>(pid) : 0;
}

bool alive(pid_t pid) { return ::kill(pid, 0) == 0 || errno == EPERM; }

// Removes what a process killed while writing or pruning checkpoints left in run_dir: its staging
// directories and checkpoints it had begun to delete. Those of live processes are left alone.
void remove_leftovers(const std::string& run_dir) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    const pid_t pid = maker_of(entry.path().filename().string());
    if (pid > 0 && pid != ::getpid() && !alive(pid)) stale.push_back(entry.path());
  }
  for (const auto& path : stale) fs::remove_all(path, ec);
}

}  // namespace

CheckpointWriter::CheckpointWriter(std::string run_dir, std::string name)
    : run_dir_(std::move(run_dir)), name_(std::move(name)) {
  check_plain_name(name_, "directory");
  staging_ = run_dir_ + "/.tmp-" + name_ + "-" + std::to_string(::getpid());
  std::error_code ec;
  fs::create_directories(run_dir_, ec);
  if (ec) fail("cannot create run directory {}: {}", run_dir_, ec.message());
  remove_leftovers(run_dir_);
  fs::remove_all(staging_, ec);  // a stale one from an earlier process with our pid
  if (!fs::create_directory(staging_, ec) || ec)
    fail("cannot create checkpoint staging directory {}: {}", staging_, ec.message());
}

CheckpointWriter::~CheckpointWriter() {
  if (committed_) return;
  std::error_code ec;  // best effort: a destructor must not throw
  fs::remove_all(staging_, ec);
}

std::string CheckpointWriter::path(const std::string& file) const {
  check_plain_name(file, "file");
  return staging_ + "/" + file;
}

void CheckpointWriter::add(const std::string& file, std::string_view bytes) {
  if (committed_) fail("checkpoint {} already committed: cannot add {}", name_, file);
  write_file_atomic(path(file), bytes);
}

std::string CheckpointWriter::commit() {
  if (committed_) fail("checkpoint {} already committed", name_);
  // Files other code wrote through path() were not fsynced by us: do all of them here.
  std::error_code ec;
  fs::directory_iterator staged(staging_, ec);
  if (ec) fail("cannot list checkpoint staging directory {}: {}", staging_, ec.message());
  for (const auto& entry : staged)
    if (entry.is_regular_file()) fsync_file(entry.path().string());
  fsync_dir(staging_);

  // A new directory is renamed into place; an existing one is exchanged with the staged one in one
  // step (renameat2's RENAME_EXCHANGE), so there is no instant without a complete <name>/. The old
  // contents, now under the staging name, are deleted after.
  const std::string final_dir = run_dir_ + "/" + name_;
  const bool replacing = fs::exists(final_dir, ec);
  if (replacing) {
    if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) != 0) {
      if (errno != EINVAL && errno != ENOSYS) fail("cannot replace checkpoint {}: {}", final_dir, std::strerror(errno));
      // A filesystem without exchange (NFS): the old one aside, the new one in, a moment apart.
      const std::string old_dir = staging_ + ".old";
      fs::rename(final_dir, old_dir, ec);
      if (ec) fail("cannot move old checkpoint {} aside: {}", final_dir, ec.message());
      fs::rename(staging_, final_dir, ec);
      if (ec) {
        std::error_code restore_ec;
        fs::rename(old_dir, final_dir, restore_ec);
        fail("cannot rename {} to {}: {}", staging_, final_dir, ec.message());
      }
      fs::rename(old_dir, staging_, ec);  // deleted below, as after an exchange
    }
  } else {
    fs::rename(staging_, final_dir, ec);
    if (ec) fail("cannot rename {} to {}: {}", staging_, final_dir, ec.message());
  }
  committed_ = true;
  fsync_dir(run_dir_);
  if (replacing) fs::remove_all(staging_, ec);
  return final_dir;
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<uint64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    const auto step = step_of(entry.path().filename().string());
    if (step && entry.is_directory()) found.emplace_back(*step, entry.path().string());
  }
  if (ec) fail("cannot list run directory {}: {}", run_dir, ec.message());
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [step, path] : found) paths.push_back(std::move(path));
  return paths;
}

void prune_checkpoints(const std::string& run_dir, int keep_last) {
  if (keep_last < 1) fail("prune_checkpoints: keep_last must be >= 1, got {}", keep_last);
  const std::vector<std::string> all = list_checkpoints(run_dir);
  // Each one leaves the checkpoints with one rename, so that a crash while deleting its files
  // never leaves a partial step-* behind (the trash is removed after, or by the next writer).
  for (size_t i = 0; i + size_t(keep_last) < all.size(); ++i) {
    std::error_code ec;
    const std::string trash =
        run_dir + "/.trash-" + fs::path(all[i]).filename().string() + "-" + std::to_string(::getpid());
    fs::rename(all[i], trash, ec);
    if (ec) fail("cannot delete old checkpoint {}: {}", all[i], ec.message());
    fs::remove_all(trash, ec);
    if (ec) fail("cannot delete old checkpoint {}: {}", all[i], ec.message());
  }
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(fs::path(path) / "model.safetensors", ec)) return path;
  const std::vector<std::string> all = list_checkpoints(path);
  if (all.empty()) fail("no checkpoint in {}: expected model.safetensors or step-* directories", path);
  return all.back();
}

}  // namespace loom
