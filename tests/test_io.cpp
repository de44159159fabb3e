// Tests for io/: atomic file writes, the safetensors format (checked byte by byte independently of
// the writer, and against hand-written corrupt files), module state, checkpoint directories.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/io/safetensors.h"

namespace fs = std::filesystem;

namespace {

// A fresh directory per test, removed afterwards.
class IoTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = testing::TempDir() + "/loom_io_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

// Plain std::ifstream/ofstream, so tests don't depend on the code under test for their I/O.
std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void spit(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

// The loom::Error message thrown by f, or a test failure if it throws nothing.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const loom::Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
    return message;
  }
  ADD_FAILURE() << "expected a loom::Error";
  return "";
}
bool contains(const std::string& s, const std::string& word) { return s.find(word) != std::string::npos; }

// A safetensors file built by hand: u64 LE length, header padded to 8, data.
std::string raw_safetensors(std::string header, const std::string& data) {
  while ((8 + header.size()) % 8) header += ' ';
  std::string out;
  for (int i = 0; i < 8; ++i) out += char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header + data;
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

// ---- fs -----------------------------------------------------------------------------------

TEST_F(IoTest, ReadFileNamesMissingPath) {
  const std::string msg = error_of([&] { loom::read_file(file("nope.bin")); });
  EXPECT_TRUE(contains(msg, "nope.bin")) << msg;
}

TEST_F(IoTest, WriteFileAtomicWritesAndReplaces) {
  loom::write_file_atomic(file("a.txt"), "first");
  loom::write_file_atomic(file("a.txt"), std::string("sec\0ond", 7));
  EXPECT_EQ(slurp(file("a.txt")), std::string("sec\0ond", 7));
  EXPECT_EQ(loom::read_file(file("a.txt")), std::string("sec\0ond", 7));
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"a.txt"});  // no temp left
}

TEST_F(IoTest, WriteFileAtomicOntoDirectoryFailsCleanly) {
  fs::create_directory(file("target"));
  spit(file("target/keep.txt"), "kept");
  const std::string msg = error_of([&] { loom::write_file_atomic(file("target"), "x"); });
  EXPECT_TRUE(contains(msg, "target")) << msg;
  EXPECT_EQ(slurp(file("target/keep.txt")), "kept");
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"target"});  // temp removed
}

TEST_F(IoTest, WriteFileAtomicIntoMissingDirFails) {
  const std::string msg = error_of([&] { loom::write_file_atomic(file("no/such/x.bin"), "x"); });
  EXPECT_TRUE(contains(msg, "x.bin")) << msg;
  EXPECT_TRUE(dir_entries(dir_).empty());
}

// A write that fails halfway (file size limit, EFBIG) must leave the old file and no temp.
TEST_F(IoTest, WriteFileAtomicFailedWriteKeepsOldFile) {
  spit(file("model.bin"), "old contents");
  struct LimitGuard {  // RLIMIT_FSIZE of 4 KiB, SIGXFSZ ignored so write() returns EFBIG
    rlimit saved{};
    void (*saved_handler)(int) = nullptr;
    LimitGuard() {
      getrlimit(RLIMIT_FSIZE, &saved);
      saved_handler = signal(SIGXFSZ, SIG_IGN);
      rlimit small = saved;
      small.rlim_cur = 4096;
      setrlimit(RLIMIT_FSIZE, &small);
    }
    ~LimitGuard() {
      setrlimit(RLIMIT_FSIZE, &saved);
      signal(SIGXFSZ, saved_handler);
    }
  };
  std::string msg;
  {
    LimitGuard guard;
    msg = error_of([&] { loom::write_file_atomic(file("model.bin"), std::string(1 << 16, 'x')); });
  }
  EXPECT_TRUE(contains(msg, "write failed")) << msg;
  EXPECT_EQ(slurp(file("model.bin")), "old contents");
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"model.bin"});
}

// ---- safetensors ----------------------------------------------------------------------------

TEST_F(IoTest, SafetensorsRoundTripEveryDtype) {
  torch::manual_seed(0);
  const std::vector<torch::ScalarType> dtypes = {torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16,
                                                 torch::kInt64,   torch::kInt32,   torch::kInt16,   torch::kInt8,
                                                 torch::kUInt8,   torch::kBool};
  loom::NamedTensors tensors;
  for (const auto dtype : dtypes) {
    const std::string name = c10::toString(dtype);
    const torch::Tensor base = dtype == torch::kBool          ? torch::randint(0, 2, {3, 5}).to(dtype)
                               : dtype == torch::kUInt8       ? torch::randint(0, 256, {3, 5}).to(dtype)
                               : torch::isFloatingType(dtype) ? torch::randn({3, 5}).to(dtype)
                                                              : torch::randint(-100, 100, {3, 5}).to(dtype);
    tensors.emplace_back(name + ".matrix", base);
    tensors.emplace_back(name + ".transposed", base.t());  // non-contiguous input
    tensors.emplace_back(name + ".scalar", base[1][2]);    // 0-dim, storage offset
    tensors.emplace_back(name + ".empty", torch::empty({0, 4}, dtype));
  }
  ASSERT_FALSE(tensors[1].second.is_contiguous());
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "120"}};
  loom::save_safetensors(file("all.safetensors"), tensors, metadata);

  const loom::Safetensors loaded = loom::load_safetensors(file("all.safetensors"));
  EXPECT_EQ(loaded.metadata, metadata);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, expected] = tensors[i];
    const auto& [got_name, got] = loaded.tensors[i];
    EXPECT_EQ(got_name, name);  // order preserved
    EXPECT_EQ(got.scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), expected.sizes()) << name;
    EXPECT_TRUE(torch::equal(got, expected)) << name;
  }
  EXPECT_EQ(loaded.tensors[2].second.dim(), 0);
}

// The layout is checked against the spec by reading the bytes here, not with the loader.
TEST_F(IoTest, SafetensorsFileLayoutMatchesSpec) {
  const torch::Tensor a = torch::arange(6, torch::kFloat32).reshape({2, 3});
  const torch::Tensor b = torch::tensor({int16_t(0x0102), int16_t(-2), int16_t(7)});
  loom::save_safetensors(file("l.safetensors"), {{"a", a}, {"b", b}, {"s", torch::tensor(1.5)}}, {{"format", "pt"}});
  const std::string bytes = slurp(file("l.safetensors"));
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  ASSERT_LE(8 + n, bytes.size());
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"], nlohmann::json({{"format", "pt"}}));
  EXPECT_EQ(header["a"]["dtype"], "F32");
  EXPECT_EQ(header["a"]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(header["a"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(header["b"]["dtype"], "I16");
  EXPECT_EQ(header["b"]["shape"], nlohmann::json({3}));
  EXPECT_EQ(header["b"]["data_offsets"], nlohmann::json({24, 30}));
  EXPECT_EQ(header["s"]["dtype"], "F32");
  EXPECT_EQ(header["s"]["shape"], nlohmann::json::array());
  EXPECT_EQ(header["s"]["data_offsets"], nlohmann::json({30, 34}));
  EXPECT_EQ(bytes.size(), 8 + n + 34) << "no trailing bytes";

  const std::string data = bytes.substr(8 + n);
  const float a_values[6] = {0, 1, 2, 3, 4, 5};
  EXPECT_EQ(std::memcmp(data.data(), a_values, 24), 0);
  const std::string b_le = {'\x02', '\x01', '\xfe', '\xff', '\x07', '\x00'};  // little-endian
  EXPECT_EQ(data.substr(24, 6), b_le);
  const float s_value = 1.5f;
  EXPECT_EQ(std::memcmp(data.data() + 30, &s_value, 4), 0);
}

// A file written by hand (header order differs from data order, as Python's writer does).
TEST_F(IoTest, SafetensorsReadsHandWrittenFile) {
  const int32_t x[2] = {-5, 70000};
  const std::string data =
      std::string("\x01\x02\x03", 3) + std::string(1, '\0') + std::string(reinterpret_cast<const char*>(x), 8);
  spit(file("h.safetensors"), raw_safetensors(R"({"x":{"dtype":"I32","shape":[2],"data_offsets":[4,12]},)"
                                              R"("u":{"dtype":"U8","shape":[1,3],"data_offsets":[0,3]},)"
                                              R"("z":{"dtype":"BOOL","shape":[1],"data_offsets":[3,4]}})",
                                              data));
  const loom::Safetensors f = loom::load_safetensors(file("h.safetensors"));
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.tensors[0].first, "x");
  EXPECT_TRUE(torch::equal(f.tensors[0].second, torch::tensor({-5, 70000}, torch::kInt32)));
  EXPECT_EQ(f.tensors[1].first, "u");
  EXPECT_TRUE(torch::equal(f.tensors[1].second, torch::tensor({{1, 2, 3}}, torch::kUInt8)));
  EXPECT_FALSE(f.tensors[2].second.item<bool>());
  EXPECT_TRUE(f.metadata.empty());
}

TEST_F(IoTest, SafetensorsTruncatedFileIsError) {
  loom::save_safetensors(file("t.safetensors"), {{"w", torch::ones({4, 4})}});
  const std::string bytes = slurp(file("t.safetensors"));
  for (const size_t keep : {size_t(0), size_t(5), size_t(12), bytes.size() - 1}) {
    spit(file("cut.safetensors"), bytes.substr(0, keep));
    const std::string msg = error_of([&] { loom::load_safetensors(file("cut.safetensors")); });
    EXPECT_TRUE(contains(msg, "truncated")) << "kept " << keep << ": " << msg;
    EXPECT_TRUE(contains(msg, "cut.safetensors")) << msg;
  }
}

TEST_F(IoTest, SafetensorsGarbageHeaderIsError) {
  loom::save_safetensors(file("g.safetensors"), {{"w", torch::ones({2})}});
  std::string bytes = slurp(file("g.safetensors"));
  bytes[8] = '!';  // first byte of the JSON
  spit(file("g.safetensors"), bytes);
  std::string msg = error_of([&] { loom::load_safetensors(file("g.safetensors")); });
  EXPECT_TRUE(contains(msg, "invalid JSON")) << msg;

  bytes[8] = '{';
  bytes[6] = '\x01';  // header length ~2^48
  spit(file("g.safetensors"), bytes);
  msg = error_of([&] { loom::load_safetensors(file("g.safetensors")); });
  EXPECT_TRUE(contains(msg, "absurd")) << msg;

  spit(file("g.safetensors"), raw_safetensors("[1, 2]", ""));
  msg = error_of([&] { loom::load_safetensors(file("g.safetensors")); });
  EXPECT_TRUE(contains(msg, "not a JSON object")) << msg;
}

// Each corrupt header gives an error naming its problem.
TEST_F(IoTest, SafetensorsBadHeadersAreErrors) {
  const std::string data(8, '\0');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", "out of range"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       "overlap"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "gap"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "trailing"},
      {R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "mismatch"},
      {R"({"w":{"dtype":"F8","shape":[8],"data_offsets":[0,8]}})", "unknown dtype"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       "duplicate"},
      {R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", "shape"},
      {R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", "shape"},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "shape"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", "data_offsets"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "reversed"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", "unexpected field"},
      {R"({"w":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", "dtype"},
      {R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", "overflow"},
      {R"({"__metadata__":{"k":1},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "metadata"},
      // found by fuzzing: a number too large for a double escaped as JSON's out_of_range
      {R"({"w":{"dtype":"F32","shape":[2e5408],"data_offsets":[0,8]}})", "invalid JSON"},
      {R"({"w":{"dtype":"BOOL","shape":[8],"data_offsets":[0,8]}})", ""},  // valid: all zero
  };
  for (const auto& [header, word] : cases) {
    spit(file("b.safetensors"), raw_safetensors(header, data));
    if (word.empty()) {
      EXPECT_NO_THROW(loom::load_safetensors(file("b.safetensors"))) << header;
      continue;
    }
    const std::string msg = error_of([&] { loom::load_safetensors(file("b.safetensors")); });
    EXPECT_TRUE(contains(msg, word)) << header << " -> " << msg;
    EXPECT_TRUE(contains(msg, "b.safetensors")) << msg;
  }
}

TEST_F(IoTest, SafetensorsRejectsBadTensorsOnSave) {
  EXPECT_TRUE(contains(error_of([&] {
                         loom::save_safetensors(file("d.safetensors"), {{"w", torch::ones(1)}, {"w", torch::ones(1)}});
                       }),
                       "duplicate"));
  EXPECT_TRUE(contains(error_of([&] {
                         loom::save_safetensors(file("d.safetensors"), {{"c", torch::ones(1, torch::kComplexFloat)}});
                       }),
                       "unsupported dtype"));
  EXPECT_FALSE(fs::exists(file("d.safetensors")));
}

// ---- module state ---------------------------------------------------------------------------

namespace {
torch::nn::Sequential tiny_model() { return torch::nn::Sequential(torch::nn::Linear(4, 3), torch::nn::BatchNorm1d(3)); }
}  // namespace

TEST_F(IoTest, ModuleStateNamesAndRoundTrip) {
  torch::manual_seed(1);
  auto source = tiny_model();
  source->forward(torch::randn({5, 4}));  // moves the BatchNorm running stats off their init
  std::vector<std::string> names;
  for (const auto& [name, t] : loom::module_state(*source)) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                             "1.running_var", "1.num_batches_tracked"}));

  loom::save_safetensors(file("m.safetensors"), loom::module_state(*source));
  auto target = tiny_model();
  const loom::Safetensors loaded = loom::load_safetensors(file("m.safetensors"));
  loom::load_module_state(*target, loaded, file("m.safetensors"));
  const loom::NamedTensors want = loom::module_state(*source), got = loom::module_state(*target);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(torch::equal(got[i].second, want[i].second)) << want[i].first;
  EXPECT_TRUE(target[0]->as<torch::nn::Linear>()->weight.requires_grad());
}

TEST_F(IoTest, LoadModuleStateConvertsDtype) {
  torch::nn::Linear source(4, 3), target(4, 3);
  loom::Safetensors file;
  for (const auto& [name, t] : loom::module_state(*source))
    file.tensors.emplace_back(name, t.detach().to(torch::kFloat64));
  loom::load_module_state(*target, file, "in-memory");
  EXPECT_EQ(target->weight.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(target->weight, source->weight));
}

TEST_F(IoTest, LoadModuleStateShapeMismatchIsError) {
  torch::nn::Linear small(4, 3), big(4, 5);
  loom::save_safetensors(file("s.safetensors"), loom::module_state(*small));
  const loom::Safetensors loaded = loom::load_safetensors(file("s.safetensors"));
  const torch::Tensor before = big->weight.detach().clone();
  const std::string msg = error_of([&] { loom::load_module_state(*big, loaded, file("s.safetensors")); });
  EXPECT_TRUE(contains(msg, "shape mismatch")) << msg;
  EXPECT_TRUE(contains(msg, "weight (model [5, 4], file [3, 4])")) << msg;
  EXPECT_TRUE(contains(msg, "s.safetensors")) << msg;
  EXPECT_TRUE(torch::equal(big->weight, before)) << "nothing copied on error";
}

TEST_F(IoTest, LoadModuleStateMissingAndUnexpectedAreErrors) {
  torch::nn::Linear model(4, 3);
  loom::Safetensors file;
  file.tensors = {{"weight", torch::zeros({3, 4})}, {"extra.thing", torch::zeros(1)}};
  const std::string msg = error_of([&] { loom::load_module_state(*model, file, "f.safetensors"); });
  EXPECT_TRUE(contains(msg, "1 missing tensor(s): bias")) << msg;
  EXPECT_TRUE(contains(msg, "1 unexpected tensor(s): extra.thing")) << msg;
}

// ---- checkpoints ----------------------------------------------------------------------------

TEST_F(IoTest, CheckpointCommitListPruneResolve) {
  const std::string run = file("run");
  for (const char* name : {"step-000010", "step-000002", "step-000120"}) {
    loom::CheckpointWriter writer(run, name);
    writer.add("model.safetensors", name);
    spit(writer.path("tokenizer.model"), "tok");  // written by other code through path()
    EXPECT_EQ(writer.commit(), run + "/" + name);
  }
  fs::create_directory(run + "/.tmp-step-000999-1");  // a crashed writer's staging dir
  fs::create_directory(run + "/step-abc");
  spit(run + "/step-000500", "a file, not a checkpoint");

  EXPECT_EQ(loom::list_checkpoints(run),
            (std::vector<std::string>{run + "/step-000002", run + "/step-000010", run + "/step-000120"}));
  EXPECT_EQ(slurp(run + "/step-000010/model.safetensors"), "step-000010");
  EXPECT_EQ(slurp(run + "/step-000010/tokenizer.model"), "tok");
  EXPECT_EQ(loom::resolve_checkpoint(run), run + "/step-000120");
  EXPECT_EQ(loom::resolve_checkpoint(run + "/step-000010"), run + "/step-000010");
  EXPECT_TRUE(contains(error_of([&] { loom::resolve_checkpoint(file("empty")); }), "no checkpoint in"));

  loom::prune_checkpoints(run, 2);
  EXPECT_EQ(loom::list_checkpoints(run), (std::vector<std::string>{run + "/step-000010", run + "/step-000120"}));
  EXPECT_TRUE(fs::exists(run + "/step-abc"));  // only step-<digits> dirs are pruned
  EXPECT_TRUE(contains(error_of([&] { loom::prune_checkpoints(run, 0); }), "keep_last"));
}

TEST_F(IoTest, CheckpointCommitReplacesExisting) {
  const std::string run = file("run");
  {
    loom::CheckpointWriter writer(run, "step-000001");
    writer.add("model.safetensors", "old");
    writer.add("stale.txt", "only in the old one");
    writer.commit();
  }
  loom::CheckpointWriter writer(run, "step-000001");
  writer.add("model.safetensors", "new");
  writer.commit();
  EXPECT_EQ(slurp(run + "/step-000001/model.safetensors"), "new");
  EXPECT_FALSE(fs::exists(run + "/step-000001/stale.txt"));
  EXPECT_EQ(dir_entries(run), std::vector<std::string>{"step-000001"});  // no staging, no .old
  EXPECT_TRUE(contains(error_of([&] { writer.commit(); }), "already committed"));
}

// A process killed while writing or pruning checkpoints leaves its staging directory (or the
// checkpoint it was deleting, renamed out of the way): the next writer removes those of dead
// processes and leaves a live one's alone.
TEST_F(IoTest, AWriterRemovesWhatKilledWritersLeft) {
  const std::string run = file("run");
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  const std::string d = std::to_string(dead);
  for (const std::string& name : {".tmp-step-000004-" + d, ".tmp-step-000004-" + d + ".old", ".trash-step-000002-" + d,
                                  std::string(".tmp-step-000006-1")}) {
    fs::create_directories(run + "/" + name);
    spit(run + "/" + name + "/model.safetensors", "partial");
  }
  loom::CheckpointWriter writer(run, "step-000008");
  writer.add("model.safetensors", "whole");
  writer.commit();
  EXPECT_EQ(dir_entries(run), (std::vector<std::string>{".tmp-step-000006-1", "step-000008"}));  // pid 1 lives
}

TEST_F(IoTest, UncommittedCheckpointLeavesNothing) {
  const std::string run = file("run");
  {
    loom::CheckpointWriter writer(run, "step-000007");
    writer.add("model.safetensors", "partial");
    EXPECT_TRUE(fs::exists(writer.path("model.safetensors")));
  }
  EXPECT_TRUE(dir_entries(run).empty());
  EXPECT_TRUE(loom::list_checkpoints(run).empty());
}

TEST_F(IoTest, CheckpointRejectsPathLikeNames) {
  EXPECT_TRUE(contains(error_of([&] { loom::CheckpointWriter(file("run"), "../escape"); }), "invalid checkpoint"));
  loom::CheckpointWriter writer(file("run"), "step-1");
  EXPECT_TRUE(contains(error_of([&] { writer.path("a/b"); }), "invalid checkpoint file"));
}
