// Token files and their memory-mapped reader; see token_stream.h.
#include "loom/data/token_stream.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "loom/core/error.h"

namespace loom {
namespace {

constexpr char kMagic[8] = {'L', 'O', 'O', 'M', 'T', 'O', 'K', '1'};
constexpr size_t kHeaderSize = 8 + 4 + 4 + 8;

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

uint64_t get_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

void write_token_file(const std::string& path, const std::vector<int32_t>& tokens, int vocab_size) {
  if (vocab_size <= 0) fail("{}: vocab_size must be positive, got {}", path, vocab_size);
  const int width = vocab_size <= 65536 ? 2 : 4;
  std::string data(kMagic, sizeof(kMagic));
  put_le(data, width, 4);
  put_le(data, static_cast<uint32_t>(vocab_size), 4);
  put_le(data, tokens.size(), 8);
  data.reserve(kHeaderSize + tokens.size() * width);
  for (int32_t t : tokens) {
    if (t < 0 || t >= vocab_size) fail("{}: token {} outside [0, {})", path, t, vocab_size);
    put_le(data, static_cast<uint32_t>(t), width);
  }
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot create {}: {}", tmp, std::strerror(errno));
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      fail("cannot write {}: {}", tmp, std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) fail("cannot flush {}: {}", tmp, std::strerror(errno));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    fail("cannot rename {} to {}: {}", tmp, path, std::strerror(errno));
  }
}

TokenStream::TokenStream(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open token file {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat token file {}", path);
  }
  const auto file_size = static_cast<size_t>(st.st_size);
  if (file_size < kHeaderSize) {
    ::close(fd);
    fail("token file {} is truncated ({} bytes, header needs {})", path, file_size, kHeaderSize);
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) fail("cannot mmap token file {}: {}", path, std::strerror(errno));
  map_ = map;
  map_size_ = file_size;
  const auto* p = static_cast<const unsigned char*>(map);
  try {
    if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0) fail("{} is not a loom token file", path);
    bytes_per_token_ = static_cast<int>(get_le(p + 8, 4));
    vocab_size_ = static_cast<int>(get_le(p + 12, 4));
    n_tokens_ = static_cast<int64_t>(get_le(p + 16, 8));
    if (bytes_per_token_ != 2 && bytes_per_token_ != 4) {
      fail("token file {}: bad bytes per token {}", path, bytes_per_token_);
    }
    const uint64_t expected = kHeaderSize + static_cast<uint64_t>(n_tokens_) * bytes_per_token_;
    if (n_tokens_ < 0 || expected != file_size) {
      fail("token file {} is truncated or corrupt: {} bytes, header implies {}", path, file_size, expected);
    }
  } catch (...) {
    release();
    throw;
  }
  tokens_ = p + kHeaderSize;
}

TokenStream::~TokenStream() { release(); }

void TokenStream::release() {
  if (map_) ::munmap(map_, map_size_);
  map_ = nullptr;
  tokens_ = nullptr;
}

TokenStream::TokenStream(TokenStream&& other) noexcept { *this = std::move(other); }

TokenStream& TokenStream::operator=(TokenStream&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_size_ = std::exchange(other.map_size_, 0);
    tokens_ = std::exchange(other.tokens_, nullptr);
    bytes_per_token_ = other.bytes_per_token_;
    vocab_size_ = other.vocab_size_;
    n_tokens_ = std::exchange(other.n_tokens_, 0);
  }
  return *this;
}

int32_t TokenStream::operator[](int64_t i) const {
  return static_cast<int32_t>(get_le(tokens_ + i * bytes_per_token_, bytes_per_token_));
}

torch::Tensor TokenStream::slice(int64_t start, int64_t length) const {
  if (start < 0 || length < 0 || start + length > n_tokens_) {
    fail("token slice [{}, {}) outside {} ({} tokens)", start, start + length, path_, n_tokens_);
  }
  torch::Tensor out = torch::empty({length}, torch::kInt64);  // [length]
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < length; ++i) dst[i] = (*this)[start + i];
  return out;
}

double unigram_entropy(const TokenStream& stream) {
  if (stream.size() == 0) fail("unigram entropy of the empty token file {}", stream.path());
  std::vector<int64_t> counts(stream.vocab_size(), 0);
  for (int64_t i = 0; i < stream.size(); ++i) ++counts.at(stream[i]);
  double h = 0.0;
  const double n = static_cast<double>(stream.size());
  for (int64_t c : counts) {
    if (c > 0) h -= (c / n) * std::log(c / n);
  }
  return h;
}

}  // namespace loom
