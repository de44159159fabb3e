// Multi-process training on torch's c10d: the environment torchrun sets (RANK, WORLD_SIZE, ...),
// rendezvous through a c10d TCPStore hosted by rank 0, collectives through a Gloo process group
// (CPU tensors), and a heartbeat in the store that turns a failed collective into an error naming
// the rank that died. docs/distributed.md.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace loom {

// torchrun's variables. No RANK/WORLD_SIZE in the environment: one process (world_size 1).
struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool distributed() const { return world_size > 1; }
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. A variable
// that is set but malformed or inconsistent (RANK >= WORLD_SIZE) is an error naming it.
DistEnv dist_env_from_environment();

// One process's membership of the group. Every collective is called by every rank in the same
// order; a failure (a peer died, the timeout passed) is a loom::Error naming the ranks that stopped.
class Communicator {
 public:
  // Rank 0 hosts the store at master_addr:master_port; every rank waits for the others up to
  // `timeout`, which also bounds each collective. GLOO_SOCKET_IFNAME picks the network interface;
  // without it, the interface that routes to master_addr.
  Communicator(const DistEnv& env, std::chrono::seconds timeout);
  // A group of some of `parent`'s ranks (members: their ranks in `parent`), with its own Gloo
  // process group over the parent's store; `name` must be the same on every member and differ
  // between groups. Each rank makes the groups it belongs to, in the same order as the others.
  Communicator(Communicator& parent, const std::string& name, const std::vector<int>& members);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return env_.rank; }
  int size() const { return env_.world_size; }
  const DistEnv& env() const { return env_; }

  // Sums the tensors over the ranks, in place: flattened into buckets of at most bucket_bytes per
  // dtype, every bucket's all-reduce started before the first is waited for.
  void all_reduce_sum(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes = 25 << 20);
  // Starts summing one contiguous tensor over the ranks, in place, and returns at once; calling
  // the returned function waits for the sum (and fails like the other collectives). The ranks
  // match started collectives by their order: every rank starts the same ones in the same order.
  std::function<void()> start_all_reduce_sum(torch::Tensor flat);
  // Element-wise maximum over the ranks, in place (one small tensor).
  void all_reduce_max(torch::Tensor& tensor);
  // Rank `root`'s values, in place, on every rank (bucketed like all_reduce_sum).
  void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);
  void barrier();
  // Rank 0's `value` under `key`, on every rank (through the store: recipes, small texts).
  std::string share(const std::string& key, const std::string& value);
  // Seconds spent waiting for collectives so far (the communication share of a step).
  double communication_seconds() const { return comm_seconds_; }

 private:
  struct Impl;
  void collective(const char* what, const std::function<void()>& body);
  DistEnv env_;
  std::unique_ptr<Impl> impl_;
  double comm_seconds_ = 0;
};

// `loom train --nproc N`: runs `argv` (this program's, without --nproc) N times on this machine
// with torchrun's variables set (MASTER_ADDR 127.0.0.1, a free port), `threads` threads each, and
// waits. SIGINT/SIGTERM are passed on to the workers. When one fails, the others get
// `grace_seconds` to end on their own (they see the dead peer), then are killed. Returns 0 when
// every worker succeeded; otherwise logs each failed rank and how it ended, and returns 1.
int launch_local_workers(int nproc, const std::vector<std::string>& argv, int threads, int grace_seconds = 60);

}  // namespace loom
