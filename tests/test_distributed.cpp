// Data-parallel training over c10d (Gloo on CPU): N processes equal one process, runs are
// deterministic, a run resumes on another number of processes, a killed worker ends the others
// with an error naming it, and two hosts in network namespaces equal one process.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "loom/checkpoint/checkpoint.h"
#include "loom/dist/dist.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/train/gradient_buckets.h"
#include "test_util.h"
#include "tiny_run.h"

extern char** environ;

namespace {
namespace fs = std::filesystem;

class Distributed : public TinyTraining {
 protected:
  // Dropout off unless asked, validation only at the end; `train` adds train keys.
  std::string recipe(const std::string& train, double dropout = 0.0) {
    return TinyTraining::recipe("dropout: " + std::to_string(dropout), "eval_every: 0, " + train);
  }
};

// The central property: N processes with a share of each batch make the same updates as one
// process with the whole batch, and as one process accumulating it in micro-batches.
TEST_F(Distributed, NProcessesEqualOneProcessWithTheWholeBatch) {
  const std::string whole = recipe("batch_size: 6, grad_accum: 1");
  train(whole + " --out " + out("one"));
  const std::string one = out("one/step-000006");
  // One process accumulating micro-batches of 2 or 3 sequences: the same rows (the batcher
  // draws a step's rows by their index in the step).
  train(recipe("batch_size: 3, grad_accum: 2") + " --out " + out("accum2"));
  train(recipe("batch_size: 2, grad_accum: 3") + " --out " + out("accum3"));
  EXPECT_LE(relative_weight_difference(out("accum2/step-000006"), one), 1e-6);
  EXPECT_LE(relative_weight_difference(out("accum3/step-000006"), one), 1e-6);
  // 2 and 3 processes, each with its rows of every batch (3 and 2 sequences)...
  for (int n : {2, 3}) {
    const std::string dir = out("rows" + std::to_string(n));
    const std::string log = train(whole + " --nproc " + std::to_string(n) + " --out " + dir);
    EXPECT_NE(log.find("data parallel over " + std::to_string(n) + " processes"), std::string::npos) << log;
    EXPECT_LE(relative_weight_difference(dir + "/step-000006", one), 1e-6) << n << " processes";
    // Two ranks add their halves as one process adds its two micro-batches: to the bit.
    if (n == 2) {
      EXPECT_EQ(relative_weight_difference(dir + "/step-000006", out("accum2/step-000006")), 0.0);
    }
  }
  // Buckets of about one tensor each, started one by one during backward: the same sums.
  train(recipe("batch_size: 6, grad_accum: 1, bucket_mb: 0.0001") + " --nproc 2 --out " + out("small-buckets"));
  EXPECT_EQ(relative_weight_difference(out("small-buckets/step-000006"), out("accum2/step-000006")), 0.0);
  // ... and each with whole micro-batches of its own (grad_accum N: per-rank batch b).
  train(recipe("batch_size: 3, grad_accum: 2") + " --nproc 2 --out " + out("micro2"));
  train(recipe("batch_size: 2, grad_accum: 3") + " --nproc 3 --out " + out("micro3"));
  EXPECT_EQ(relative_weight_difference(out("micro2/step-000006"), out("accum2/step-000006")), 0.0);
  EXPECT_LE(relative_weight_difference(out("micro3/step-000006"), out("accum3/step-000006")), 1e-6);
  EXPECT_LE(relative_weight_difference(out("micro3/step-000006"), one), 1e-6);
  // Rank 0 alone wrote the run: metrics with the global token count.
  std::ifstream metrics(out("rows2/metrics.jsonl"));
  std::string first;
  std::getline(metrics, first);
  EXPECT_NE(first.find("\"tokens\":192"), std::string::npos) << first;  // 6 sequences x 32 tokens
}

// With dropout each rank draws its own masks, from the seed, the batch and its rank: two runs
// on the same number of processes are identical to the bit.
TEST_F(Distributed, DropoutRunsAreDeterministicForAFixedNumberOfProcesses) {
  const std::string r = recipe("batch_size: 6", 0.2);
  train(r + " --nproc 2 --out " + out("a"));
  train(r + " --nproc 2 --out " + out("b"));
  EXPECT_EQ(relative_weight_difference(out("a/step-000006"), out("b/step-000006")), 0.0);
  // ... and they differ from one process's (which draws one set of masks for the whole batch).
  train(r + " --out " + out("one"));
  EXPECT_GT(relative_weight_difference(out("a/step-000006"), out("one/step-000006")), 1e-6);
}

// The data of a step does not depend on the number of processes: a run stopped on 2 resumes on
// 3 (or 1) and ends where one uninterrupted process does.
TEST_F(Distributed, AResumeMayUseAnotherNumberOfProcesses) {
  const std::string r = recipe("batch_size: 6");
  train(r + " --out " + out("one"));
  train(r + " --nproc 2 --stop-after 3 --out " + out("run"));
  ASSERT_TRUE(fs::exists(out("run/step-000003")));
  train("--resume " + out("run/step-000003") + " --nproc 3");
  EXPECT_LE(relative_weight_difference(out("run/step-000006"), out("one/step-000006")), 1e-6);
  train(r + " --nproc 3 --stop-after 3 --out " + out("run1"));
  train("--resume " + out("run1/step-000003"));
  EXPECT_LE(relative_weight_difference(out("run1/step-000006"), out("one/step-000006")), 1e-6);
}

// The pids of `parent`'s children, from /proc.
std::vector<pid_t> children_of(pid_t parent) {
  std::ifstream in("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  std::vector<pid_t> pids;
  for (pid_t pid; in >> pid;) pids.push_back(pid);
  return pids;
}

// A process's environment variable, from /proc.
std::string environment_of(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  for (std::string entry; std::getline(in, entry, '\0');)
    if (entry.rfind(name + "=", 0) == 0) return entry.substr(name.size() + 1);
  return "";
}

// SIGKILL one worker mid-run: the others stop by themselves (the launcher kills nobody) within
// seconds, naming the dead rank; the run resumes from its last checkpoint and ends exactly where
// an uninterrupted run on the same number of processes does.
TEST_F(Distributed, AKilledWorkerEndsTheOthersWithAnErrorNamingIt) {
  const std::string r = recipe("batch_size: 6") + " --set train.save_every=20";
  const std::string log = out("killed.log");
  const std::string command = std::string(LOOM_BINARY) + " --threads 1 train " + r + " --steps 400 --nproc 3 --out " +
                              out("run") + " > " + log + " 2>&1";
  pid_t shell = 0;
  const char* argv[] = {"/bin/sh", "-c", command.c_str(), nullptr};
  ASSERT_EQ(posix_spawn(&shell, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
  // The launcher is the shell's child (or the shell itself, when it execs); its children the workers.
  pid_t victim = 0;
  const auto start = std::chrono::steady_clock::now();
  while (victim == 0 && std::chrono::steady_clock::now() - start < std::chrono::seconds(60)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!fs::exists(out("run/step-000020"))) continue;  // training is under way
    std::vector<pid_t> launchers = children_of(shell);
    launchers.push_back(shell);
    for (pid_t launcher : launchers)
      for (pid_t worker : children_of(launcher))
        if (environment_of(worker, "RANK") == "1") victim = worker;
  }
  ASSERT_NE(victim, 0) << "no worker of rank 1 found";
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const auto killed = std::chrono::steady_clock::now();
  int status = 0;
  ASSERT_EQ(waitpid(shell, &status, 0), shell);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_LT(seconds, 60);
  EXPECT_NE(WEXITSTATUS(status), 0);
  const std::string output = loom::read_file(log);
  EXPECT_NE(output.find("worker rank 1 was killed by signal 9"), std::string::npos) << output;
  EXPECT_NE(output.find("rank 1 stopped"), std::string::npos) << output;  // the survivors' errors name it
  EXPECT_EQ(output.find("did not stop within"), std::string::npos) << output;
  // Resume to step 60, compared with a run that was never interrupted.
  auto saved = loom::list_checkpoints(out("run"));
  ASSERT_FALSE(saved.empty());
  const int last = std::stoi(fs::path(saved.back()).filename().string().substr(5));
  ASSERT_LT(last, 60) << saved.back();
  train("--resume " + out("run") + " --nproc 3 --stop-after " + std::to_string(60 - last));
  train(r + " --nproc 3 --steps 400 --stop-after 60 --out " + out("straight"));
  EXPECT_EQ(relative_weight_difference(out("run/step-000060"), out("straight/step-000060")), 0.0);
}

// Two hosts: rank 0 and rank 1 in two network namespaces joined by a veth pair, MASTER_ADDR the
// first namespace's address. Needs root (ip netns); skipped otherwise.
TEST_F(Distributed, TwoHostsInNetworkNamespacesEqualOneProcess) {
  if (geteuid() != 0 || std::system("ip netns list > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "needs root and iproute2 to make network namespaces";
  const std::string tag = std::to_string(getpid() % 100000);
  const std::string a = "loom-a" + tag, b = "loom-b" + tag;
  const std::string setup = "set -e; ip netns add " + a + "; ip netns add " + b + "; ip link add va" + tag + " netns " +
                            a + " type veth peer name vb" + tag + " netns " + b + "; ip -n " + a +
                            " addr add 10.231.0.1/24 dev va" + tag + "; ip -n " + b + " addr add 10.231.0.2/24 dev vb" +
                            tag + "; ip -n " + a + " link set va" + tag + " up; ip -n " + b + " link set vb" + tag +
                            " up; ip -n " + a + " link set lo up; ip -n " + b + " link set lo up";
  struct Cleanup {
    std::string a, b;
    ~Cleanup() { std::system(("ip netns del " + a + " 2>/dev/null; ip netns del " + b + " 2>/dev/null").c_str()); }
  } cleanup{a, b};
  ASSERT_EQ(std::system(setup.c_str()), 0) << setup;
  const std::string r = recipe("batch_size: 6");
  train(r + " --out " + out("one"));
  auto rank = [&](int i, const std::string& ns) {
    return "ip netns exec " + ns + " env RANK=" + std::to_string(i) +
           " WORLD_SIZE=2 MASTER_ADDR=10.231.0.1 MASTER_PORT=29731 " + LOOM_BINARY + " --threads 1 train " + r +
           " --out " + out("hosts") + " > " + out("rank" + std::to_string(i) + ".log") + " 2>&1";
  };
  const std::string both = "(" + rank(1, b) + ") & " + rank(0, a) + "; s0=$?; wait $!; s1=$?; exit $((s0 + s1))";
  const int status = std::system(both.c_str());
  EXPECT_EQ(status, 0) << loom::read_file(out("rank0.log")) << loom::read_file(out("rank1.log"));
  const std::string log0 = loom::read_file(out("rank0.log"));
  EXPECT_NE(log0.find("store 10.231.0.1:29731"), std::string::npos) << log0;
  EXPECT_LE(relative_weight_difference(out("hosts/step-000006"), out("one/step-000006")), 1e-6);
}

// Two ranks in two threads, each with its own inputs and two backward passes (micro-batches):
// every rank ends with the sum of both ranks' accumulated gradients; buckets start during the
// armed backward in index order, so a parameter rank 0 does not use holds back the buckets after
// it there until the end of backward but not on rank 1; a parameter no rank uses gets zeros and
// counts as having no gradient.
TEST(GradientBuckets, SumTheRanksGradientsStartingDuringBackward) {
  // In registration order; buckets go in reverse: w3, w2, v, w1, unused.
  // Drawn before the threads start (the global generator is shared): initial values, and the
  // inputs of each rank's two micro-batches.
  torch::manual_seed(5);
  std::vector<torch::Tensor> initial;
  for (auto shape : {std::vector<int64_t>{3}, {4, 8}, {8}, {8, 8}, {8, 1}}) initial.push_back(torch::randn(shape));
  const auto inputs = torch::randn({2, 2, 5, 4});  // [rank, micro, rows, 4]
  auto make = [&] {
    std::vector<torch::Tensor> p;
    for (const auto& t : initial) p.push_back(t.clone().requires_grad_());
    return p;
  };
  auto backward = [&](const std::vector<torch::Tensor>& p, int rank, int micro) {
    auto h = torch::tanh(inputs[rank][micro].matmul(p[1]));
    if (rank == 1) h = h + p[2];
    torch::tanh(h.matmul(p[3])).matmul(p[4]).pow(2).sum().backward();
  };
  std::vector<torch::Tensor> expected(5);
  for (int rank : {0, 1}) {
    const auto p = make();
    backward(p, rank, 0), backward(p, rank, 1);
    for (size_t k = 1; k < 5; ++k)
      expected[k] = expected[k].defined() || p[k].grad().defined()
                        ? (expected[k].defined() ? expected[k] : torch::zeros_like(p[k])) + p[k].grad()
                        : expected[k];
  }
  const int port = free_port();
  std::vector<std::vector<torch::Tensor>> grads(2);
  std::vector<std::vector<bool>> had(2);
  std::vector<int64_t> early(2), buckets(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank : {0, 1})
    threads.emplace_back([&, rank] {
      try {
        loom::DistEnv env;
        env.rank = rank, env.world_size = 2, env.master_port = port;
        loom::Communicator dist(env, std::chrono::seconds(30));
        const auto p = make();
        loom::GradientBuckets reducer(p, dist, 1);  // one parameter per bucket
        backward(p, rank, 0);
        reducer.arm();
        backward(p, rank, 1);
        early[rank] = reducer.started_during_backward();
        buckets[rank] = reducer.count();
        had[rank] = reducer.finish();
        for (const auto& t : p) grads[rank].push_back(t.grad());
      } catch (const std::exception& e) {
        errors[rank] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  for (int rank : {0, 1}) {
    EXPECT_EQ(buckets[rank], 5);
    EXPECT_EQ(had[rank], (std::vector<bool>{false, true, rank == 1, true, true})) << "rank " << rank;
    EXPECT_TRUE(torch::equal(grads[rank][0], torch::zeros({3}))) << "rank " << rank;
    for (size_t k = 1; k < 5; ++k)
      EXPECT_TRUE(torch::allclose(grads[rank][k], expected[k], 1e-6, 1e-7)) << "rank " << rank << " parameter " << k;
  }
  EXPECT_EQ(early[0], 2);  // w3, w2; then v waits for the end
  EXPECT_EQ(early[1], 4);  // all but the unused one
}

TEST(DistEnv, ReadsTorchrunsVariablesAndRejectsBadOnes) {
  struct Env {
    std::vector<std::string> names{"RANK",        "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                   "MASTER_ADDR", "MASTER_PORT"};
    Env() {
      for (const auto& n : names) unsetenv(n.c_str());
    }
    ~Env() {
      for (const auto& n : names) unsetenv(n.c_str());
    }
  } clean;
  EXPECT_FALSE(loom::dist_env_from_environment().distributed());
  setenv("RANK", "1", 1);
  setenv("WORLD_SIZE", "4", 1);
  setenv("LOCAL_WORLD_SIZE", "2", 1);
  setenv("MASTER_ADDR", "node7", 1);
  setenv("MASTER_PORT", "1234", 1);
  auto env = loom::dist_env_from_environment();
  EXPECT_TRUE(env.distributed());
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "node7");
  EXPECT_EQ(env.master_port, 1234);
  setenv("RANK", "4", 1);
  EXPECT_NE(error_message([] { loom::dist_env_from_environment(); }).find("RANK=4 but WORLD_SIZE=4"),
            std::string::npos);
  setenv("RANK", "x1", 1);
  EXPECT_NE(error_message([] { loom::dist_env_from_environment(); }).find("RANK=x1: not an integer"),
            std::string::npos);
  setenv("RANK", "0", 1);
  setenv("MASTER_PORT", "70000", 1);
  EXPECT_NE(error_message([] { loom::dist_env_from_environment(); }).find("not a port"), std::string::npos);
}

// A rank that cannot meet the others says where it looked, within the timeout.
TEST(Communicator, ARankAloneTimesOutWithAClearError) {
  loom::DistEnv env;
  env.rank = 1;
  env.world_size = 2;
  env.master_port = 1;  // nothing listens there
  const std::string message = error_message([&] { loom::Communicator c(env, std::chrono::seconds(2)); });
  EXPECT_NE(message.find("could not meet the other ranks at 127.0.0.1:1"), std::string::npos) << message;
}

}  // namespace
