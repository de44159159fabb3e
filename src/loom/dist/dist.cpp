#include "loom/dist/dist.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "loom/core/error.h"
#include "loom/core/log.h"

#include <fmt/ranges.h>

namespace loom {
namespace {

int env_int(const char* name, int fallback, int min) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  int value = 0;
  const char* end = text + std::strlen(text);
  auto [at, ec] = std::from_chars(text, end, value);
  if (ec != std::errc() || at != end) fail("{}={}: not an integer", name, text);
  if (value < min) fail("{}={}: must be >= {}", name, text, min);
  return value;
}

std::string what_of(std::exception_ptr error) {
  try {
    std::rethrow_exception(std::move(error));
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

// This host's address on the route to `host` (no packet is sent: connecting a UDP socket only
// picks the route), so Gloo listens on the interface the other ranks reach, in any namespace.
std::string local_address_towards(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (const int status = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found); status != 0)
    fail("MASTER_ADDR={}: {}", host, gai_strerror(status));
  std::string address;
  for (addrinfo* a = found; a != nullptr && address.empty(); a = a->ai_next) {
    const int sock = socket(a->ai_family, a->ai_socktype, 0);
    if (sock < 0) continue;
    sockaddr_storage local{};
    socklen_t size = sizeof(local);
    if (connect(sock, a->ai_addr, a->ai_addrlen) == 0 &&
        getsockname(sock, reinterpret_cast<sockaddr*>(&local), &size) == 0) {
      char text[INET6_ADDRSTRLEN] = {};
      const void* raw = local.ss_family == AF_INET
                            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
                            : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
      if (inet_ntop(local.ss_family, raw, text, sizeof(text)) != nullptr) address = text;
    }
    close(sock);
  }
  freeaddrinfo(found);
  if (address.empty()) fail("MASTER_ADDR={}: no route to it from this host", host);
  return address;
}

// Groups the tensors into runs of one dtype of at most `bucket_bytes` (a tensor larger than that
// is a bucket of its own).
std::vector<std::vector<torch::Tensor>> buckets_of(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  std::vector<std::vector<torch::Tensor>> buckets;
  std::map<c10::ScalarType, std::pair<size_t, int64_t>> open;  // dtype -> (bucket index, bytes)
  for (const auto& t : tensors) {
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    auto it = open.find(t.scalar_type());
    if (it == open.end() || it->second.second + bytes > bucket_bytes) {
      buckets.emplace_back();
      it = open.insert_or_assign(t.scalar_type(), std::make_pair(buckets.size() - 1, int64_t{0})).first;
    }
    buckets[it->second.first].push_back(t);
    it->second.second += bytes;
  }
  return buckets;
}

torch::Tensor flatten(const std::vector<torch::Tensor>& bucket) {
  std::vector<torch::Tensor> flat;
  for (const auto& t : bucket) flat.push_back(t.reshape({-1}));
  return torch::cat(flat);
}

void unflatten(const torch::Tensor& flat, const std::vector<torch::Tensor>& bucket) {
  torch::NoGradGuard no_grad;
  int64_t at = 0;
  for (const auto& t : bucket) {
    t.copy_(flat.narrow(0, at, t.numel()).view(t.sizes()));
    at += t.numel();
  }
}

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv env;
  env.world_size = env_int("WORLD_SIZE", 1, 1);
  env.rank = env_int("RANK", 0, 0);
  if (env.rank >= env.world_size)
    fail("RANK={} but WORLD_SIZE={}: ranks are 0..{}", env.rank, env.world_size, env.world_size - 1);
  env.local_world_size = env_int("LOCAL_WORLD_SIZE", env.world_size, 1);
  env.local_rank = env_int("LOCAL_RANK", env.rank % env.local_world_size, 0);
  if (env.local_rank >= env.local_world_size)
    fail("LOCAL_RANK={} but LOCAL_WORLD_SIZE={}", env.local_rank, env.local_world_size);
  if (const char* addr = std::getenv("MASTER_ADDR"); addr != nullptr && *addr != '\0') env.master_addr = addr;
  env.master_port = env_int("MASTER_PORT", 29500, 1);
  if (env.master_port > 65535) fail("MASTER_PORT={}: not a port", env.master_port);
  if (env.distributed() && std::getenv("RANK") == nullptr) fail("WORLD_SIZE={} needs RANK too", env.world_size);
  return env;
}

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;  // rank 0 hosts it
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  // The heartbeat thread and the main thread (and subgroups') share the store client.
  std::shared_ptr<std::mutex> store_mutex = std::make_shared<std::mutex>();
  std::vector<int> world_ranks;  // the members' ranks in the whole world, by rank in this group
  std::thread heartbeat;
  std::mutex stop_mutex;
  std::condition_variable stop_cv;
  bool stopping = false;
  int shared = 0;  // share() calls so far: each gets its own key
  int world_size = 1;
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;  // for subgroups
  std::chrono::milliseconds timeout{0};

  static std::string heartbeat_key(int rank) { return "loom/heartbeat/" + std::to_string(rank); }
  static constexpr auto kBeat = std::chrono::milliseconds(500);

  // Every kBeat, this rank's counter in the store moves on; never throws.
  void beat(int rank) {
    for (uint64_t n = 0;; ++n) {
      try {
        std::lock_guard lock(*store_mutex);
        const std::string value = std::to_string(n);
        store->set(heartbeat_key(rank), std::vector<uint8_t>(value.begin(), value.end()));
      } catch (...) {  // the store's host is gone: the main thread finds out at its next collective
      }
      std::unique_lock lock(stop_mutex);
      if (stop_cv.wait_for(lock, kBeat, [&] { return stopping; })) return;
    }
  }
};

Communicator::Communicator(const DistEnv& env, std::chrono::seconds timeout)
    : env_(env), impl_(std::make_unique<Impl>()) {
  const std::string where = fmt::format("{}:{}", env.master_addr, env.master_port);
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(env.master_port);
    options.isServer = env.rank == 0;
    options.numWorkers = static_cast<size_t>(env.world_size);
    options.waitWorkers = true;
    options.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  } catch (const std::exception& e) {
    const std::string what = dynamic_cast<const c10::Error*>(&e) != nullptr
                                 ? static_cast<const c10::Error&>(e).what_without_backtrace()
                                 : e.what();
    fail("rank {} of {}: could not meet the other ranks at {} within {} s ({}): {}", env.rank, env.world_size, where,
         timeout.count(), env.rank == 0 ? "rank 0 hosts the store there" : "rank 0 hosts the store there: is it up?",
         what);
  }
  try {
    auto options =
        c10d::ProcessGroupGloo::Options::create(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0')
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else
      options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(local_address_towards(env.master_addr, env.master_port)));
    impl_->devices = options->devices;
    impl_->timeout = options->timeout;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("loom/gloo", impl_->store);
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, env.rank, env.world_size, options);
  } catch (const Error&) {
    throw;
  } catch (const std::exception&) {
    fail("rank {} of {}: could not connect the process group (store {}): {}", env.rank, env.world_size, where,
         what_of(std::current_exception()));
  }
  impl_->world_size = env.world_size;
  for (int r = 0; r < env.world_size; ++r) impl_->world_ranks.push_back(r);
  impl_->heartbeat = std::thread([this] { impl_->beat(env_.rank); });
  logger().info("rank {} of {} joined (store {}, Gloo)", env.rank, env.world_size, where);
}

Communicator::Communicator(Communicator& parent, const std::string& name, const std::vector<int>& members)
    : env_(parent.env_), impl_(std::make_unique<Impl>()) {
  const auto self = std::find(members.begin(), members.end(), parent.rank());
  if (self == members.end()) fail("rank {} is not a member of group {}", parent.rank(), name);
  env_.rank = static_cast<int>(self - members.begin());
  env_.world_size = static_cast<int>(members.size());
  impl_->store = parent.impl_->store;
  impl_->store_mutex = parent.impl_->store_mutex;
  impl_->world_size = parent.impl_->world_size;
  for (int m : members) impl_->world_ranks.push_back(parent.impl_->world_ranks.at(static_cast<size_t>(m)));
  collective("making group", [&] {
    auto options = c10d::ProcessGroupGloo::Options::create(parent.impl_->timeout);
    options->devices = parent.impl_->devices;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("loom/group/" + name, impl_->store);
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, env_.rank, env_.world_size, options);
  });
}

Communicator::~Communicator() {
  {
    std::lock_guard lock(impl_->stop_mutex);
    impl_->stopping = true;
  }
  impl_->stop_cv.notify_all();
  if (impl_->heartbeat.joinable()) impl_->heartbeat.join();
  impl_->group.reset();
  impl_->store.reset();
}

namespace {

// The ranks whose heartbeat did not move over two beats; nullopt when the store is unreachable
// (rank 0, its host, is gone).
std::optional<std::vector<int>> stopped_ranks(c10d::Store& store, std::mutex& store_mutex,
                                              const std::vector<int>& ranks, int self) {
  const int size = static_cast<int>(ranks.size());
  auto read = [&] {
    std::vector<std::string> values;
    std::lock_guard lock(store_mutex);
    for (int r = 0; r < size; ++r) {
      const std::string key = "loom/heartbeat/" + std::to_string(ranks[r]);
      if (!store.check({key})) {
        values.emplace_back();
        continue;
      }
      auto bytes = store.get(key);
      values.emplace_back(bytes.begin(), bytes.end());
    }
    return values;
  };
  try {
    const auto before = read();
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    const auto after = read();
    std::vector<int> stopped;
    for (int r = 0; r < size; ++r)
      if (ranks[r] != self && before[r] == after[r]) stopped.push_back(ranks[r]);
    return stopped;
  } catch (...) {
    return std::nullopt;
  }
}

}  // namespace

// Runs a collective; a failure becomes one error naming the ranks that stopped, as far as the
// store tells.
void Communicator::collective(const char* what, const std::function<void()>& body) {
  try {
    const auto start = std::chrono::steady_clock::now();
    body();
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } catch (const std::exception&) {
    const std::string cause = what_of(std::current_exception());
    std::vector<int> world(static_cast<size_t>(impl_->world_size));
    for (int r = 0; r < impl_->world_size; ++r) world[r] = r;
    const auto stopped = stopped_ranks(*impl_->store, *impl_->store_mutex, world, impl_->world_ranks[rank()]);
    std::string who = "a peer failed";
    if (!stopped)
      who = fmt::format("rank 0 is gone (the store it hosted at {}:{} does not answer)", env_.master_addr,
                        env_.master_port);
    else if (!stopped->empty())
      who = fmt::format("rank {} stopped (its heartbeat in the store no longer moves)", fmt::join(*stopped, ", rank "));
    fail("rank {} of {}: {} failed: {}: {}", impl_->world_ranks[rank()], impl_->world_size, what, who, cause);
  }
}

void Communicator::all_reduce_sum(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  collective("all-reduce", [&] {
    const auto buckets = buckets_of(tensors, bucket_bytes);
    std::vector<torch::Tensor> flats;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (const auto& bucket : buckets) {
      flats.push_back(flatten(bucket));
      std::vector<torch::Tensor> one{flats.back()};
      works.push_back(impl_->group->allreduce(one));
    }
    for (size_t i = 0; i < buckets.size(); ++i) {
      works[i]->wait();
      unflatten(flats[i], buckets[i]);
    }
  });
}

std::function<void()> Communicator::start_all_reduce_sum(torch::Tensor flat) {
  c10::intrusive_ptr<c10d::Work> work;
  collective("all-reduce", [&] {
    std::vector<torch::Tensor> one{std::move(flat)};
    work = impl_->group->allreduce(one);
  });
  return [this, work] { collective("all-reduce", [&] { work->wait(); }); };
}

void Communicator::all_reduce_max(torch::Tensor& tensor) {
  collective("all-reduce", [&] {
    std::vector<torch::Tensor> one{tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::MAX;
    impl_->group->allreduce(one, options)->wait();
  });
}

void Communicator::broadcast(const std::vector<torch::Tensor>& tensors, int root) {
  collective("broadcast", [&] {
    const auto buckets = buckets_of(tensors, int64_t{25} << 20);
    c10d::BroadcastOptions options;
    options.rootRank = root;
    for (const auto& bucket : buckets) {
      std::vector<torch::Tensor> one{flatten(bucket)};
      impl_->group->broadcast(one, options)->wait();
      unflatten(one[0], bucket);
    }
  });
}

void Communicator::barrier() {
  collective("barrier", [&] { impl_->group->barrier()->wait(); });
}

std::string Communicator::share(const std::string& key, const std::string& value) {
  const std::string full = fmt::format("loom/share/{}/{}", impl_->shared++, key);
  std::string out;
  collective("sharing the run's settings", [&] {
    std::lock_guard lock(*impl_->store_mutex);
    if (rank() == 0) {
      impl_->store->set(full, std::vector<uint8_t>(value.begin(), value.end()));
      out = value;
    } else {
      const auto bytes = impl_->store->get(full);
      out.assign(bytes.begin(), bytes.end());
    }
  });
  return out;
}

// ---- the local launcher --------------------------------------------------------------------------

namespace {

std::atomic<int> g_forward_signal{0};
void on_launcher_signal(int signal) { g_forward_signal = signal; }

int free_local_port() {
  const int sock = socket(AF_INET, SOCK_STREAM, 0);
  if (sock < 0) fail("cannot make a socket: {}", std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(address);
  if (bind(sock, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(sock, reinterpret_cast<sockaddr*>(&address), &size) != 0) {
    close(sock);
    fail("cannot find a free port on 127.0.0.1: {}", std::strerror(errno));
  }
  close(sock);
  return ntohs(address.sin_port);
}

std::string how_it_ended(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return "ended";
}

}  // namespace

int launch_local_workers(int nproc, const std::vector<std::string>& argv, int threads, int grace_seconds) {
  if (nproc < 1) fail("--nproc must be >= 1, got {}", nproc);
  const int port = free_local_port();
  // --threads (a global option, before the subcommand) becomes this worker's share.
  std::vector<std::string> args{argv.at(0), "--threads", std::to_string(threads)};
  for (size_t i = 1; i < argv.size(); ++i) {
    if (argv[i] == "--threads") ++i;
    else if (argv[i].rfind("--threads=", 0) != 0) args.push_back(argv[i]);
  }
  std::vector<char*> raw;
  for (auto& a : args) raw.push_back(a.data());
  raw.push_back(nullptr);
  auto previous_int = std::signal(SIGINT, on_launcher_signal);
  auto previous_term = std::signal(SIGTERM, on_launcher_signal);
  g_forward_signal = 0;
  std::vector<pid_t> pids(static_cast<size_t>(nproc), -1);
  std::vector<int> statuses(static_cast<size_t>(nproc), 0);
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = fork();
    if (pid < 0) fail("cannot start worker {}: {}", r, std::strerror(errno));
    if (pid == 0) {
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      execv("/proc/self/exe", raw.data());
      std::fprintf(stderr, "loom: error: cannot run worker %d: %s\n", r, std::strerror(errno));
      _exit(127);
    }
    pids[static_cast<size_t>(r)] = pid;
  }
  logger().info("started {} workers (ranks 0..{}, {} threads each, store 127.0.0.1:{})", nproc, nproc - 1, threads,
                port);
  int running = nproc, forwarded = 0, first_failed = -1;
  bool killed = false;
  std::chrono::steady_clock::time_point failed_at;
  while (running > 0) {
    if (const int signal = g_forward_signal.load(); signal != 0 && signal != forwarded) {
      for (size_t r = 0; r < pids.size(); ++r)
        if (pids[r] > 0) kill(pids[r], signal);
      forwarded = signal;
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (size_t r = 0; r < pids.size(); ++r) {
        if (pids[r] != pid) continue;
        pids[r] = -1;
        statuses[r] = status;
        --running;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && first_failed < 0) {
          first_failed = static_cast<int>(r);
          failed_at = std::chrono::steady_clock::now();
          logger().error("worker rank {} {}; waiting up to {} s for the others to stop", r, how_it_ended(status),
                         grace_seconds);
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    if (first_failed >= 0 && !killed &&
        std::chrono::steady_clock::now() - failed_at > std::chrono::seconds(grace_seconds)) {
      for (size_t r = 0; r < pids.size(); ++r)
        if (pids[r] > 0) {
          logger().error("worker rank {} did not stop within {} s: killing it", r, grace_seconds);
          kill(pids[r], SIGKILL);
        }
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::signal(SIGINT, previous_int);
  std::signal(SIGTERM, previous_term);
  int failures = 0;
  for (int r = 0; r < nproc; ++r) {
    const int status = statuses[static_cast<size_t>(r)];
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    ++failures;
    logger().error("worker rank {} {}", r, how_it_ended(status));
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace loom
