// Helpers shared by the test files: running the loom binary, reading a module's parameter by name.
#pragma once
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "loom/core/error.h"

// A TCP port on the loopback nothing listens on now.
inline int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
  close(s);
  return ntohs(a.sin_port);
}

// A fresh directory under /tmp, removed when the test ends.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("loom_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

struct CommandResult {
  int status;
  std::string output;  // stdout and stderr together
};

// Runs the loom binary under test (LOOM_BINARY) with `args`.
inline CommandResult run_loom(const std::string& args) {
  const std::string command = std::string(LOOM_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  std::array<char, 4096> buffer{};
  while (size_t n = fread(buffer.data(), 1, buffer.size(), pipe)) output.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// A bad-input answer: non-zero exit and exactly one line, "loom: error: ...", naming `what`.
inline void expect_one_line_error(const CommandResult& r, const std::string& what) {
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("loom: error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_NE(r.output.find(what), std::string::npos) << "expected '" << what << "' in: " << r.output;
}

// A module's parameter by its dotted name (a test failure if there is none).
inline torch::Tensor param(torch::nn::Module& m, const std::string& name) {
  for (auto& item : m.named_parameters())
    if (item.key() == name) return item.value();
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

// The message of the loom::Error that f() throws, or "no error".
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const loom::Error& e) {
    return e.what();
  }
  return "no error";
}

// Gives loom's attention mixer (fused wqkv, wo) the weights of libtorch's MultiheadAttention, with
// random biases shared by both, so the two can be compared on the same input.
inline void share_weights_with(torch::nn::Module& attention, torch::nn::MultiheadAttention& reference) {
  torch::NoGradGuard no_grad;
  const int64_t d_model = reference->out_proj->weight.size(0);
  param(attention, "wqkv.weight").copy_(reference->in_proj_weight);
  param(attention, "wqkv.bias").copy_(torch::randn({3 * d_model}));
  reference->in_proj_bias.copy_(param(attention, "wqkv.bias"));
  param(attention, "wo.weight").copy_(reference->out_proj->weight);
  param(attention, "wo.bias").copy_(torch::randn({d_model}));
  reference->out_proj->bias.copy_(param(attention, "wo.bias"));
}
