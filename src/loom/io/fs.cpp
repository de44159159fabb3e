// POSIX implementations of the io/ file helpers; see fs.h.
#include "loom/io/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "loom/core/error.h"

namespace loom {
namespace {

std::string errno_text() { return std::strerror(errno); }

// The directory holding `path` ("." for a bare file name), for fsync after a rename.
std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Closes a file descriptor on scope exit unless released.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string read_file(const std::string& path) {
  Fd file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) fail("cannot open {}: {}", path, errno_text());
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) fail("cannot stat {}: {}", path, errno_text());
  if (S_ISDIR(st.st_mode)) fail("cannot read {}: is a directory", path);
  std::string bytes;
  bytes.reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(file.fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot read {}: {}", path, errno_text());
    if (n == 0) break;
    bytes.append(buffer, static_cast<size_t>(n));
  }
  return bytes;
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  Fd file{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
  if (file.fd < 0) fail("cannot write {}: cannot create {}: {}", path, tmp, errno_text());
  // From here on every failure removes the temp file before throwing.
  auto fail_removing_tmp = [&](const char* what) {
    const std::string reason = errno_text();
    ::close(file.fd);
    file.fd = -1;
    ::unlink(tmp.c_str());
    fail("cannot write {}: {} failed: {}", path, what, reason);
  };
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(file.fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_removing_tmp("write");
    done += static_cast<size_t>(n);
  }
  if (::fsync(file.fd) != 0) fail_removing_tmp("fsync");
  const int fd = file.fd;
  file.fd = -1;
  if (::close(fd) != 0) {
    const std::string reason = errno_text();
    ::unlink(tmp.c_str());
    fail("cannot write {}: close failed: {}", path, reason);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = errno_text();
    ::unlink(tmp.c_str());
    fail("cannot write {}: rename from {} failed: {}", path, tmp, reason);
  }
  fsync_dir(parent_dir(path));
}

void fsync_dir(const std::string& dir) {
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0) fail("cannot open directory {}: {}", dir, errno_text());
  if (::fsync(d.fd) != 0) fail("cannot fsync directory {}: {}", dir, errno_text());
}

void fsync_file(const std::string& path) {
  Fd file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) fail("cannot open {}: {}", path, errno_text());
  if (::fsync(file.fd) != 0) fail("cannot fsync {}: {}", path, errno_text());
}

}  // namespace loom
