// SentencePiece training and encoding through the shim module; see tokenizer.h and
// spm_shim/spm_api.h for why sentencepiece is not linked into loom directly.
#include "loom/data/tokenizer.h"

#include <dlfcn.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <fmt/ranges.h>

#include "loom/core/error.h"
#include "loom/data/bpe_tokenizer.h"
#include "loom/data/spm_shim/spm_api.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

constexpr const char* kShimName = "libloom_sentencepiece.so";

// The directory of the file that holds this code: libloom.so, wherever it is installed (or the
// executable, if loom was linked into it statically).
fs::path own_directory() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<const void*>(&own_directory), &info) == 0 || info.dli_fname == nullptr) return {};
  std::error_code ec;
  const fs::path path = fs::canonical(info.dli_fname, ec);
  return ec ? fs::path() : path.parent_path();
}

// Looks for the shim in $LOOM_SENTENCEPIECE_SHIM, then next to the loom library (as the build tree
// has it) or in the loom/ folder beside it (as `cmake --install` puts it: <prefix>/lib/loom/), then
// next to the running executable; loads it into a fresh link namespace.
const loom_spm_api& api() {
  static const loom_spm_api* loaded = [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("LOOM_SENTENCEPIECE_SHIM")) candidates.push_back(env);
    if (const fs::path lib = own_directory(); !lib.empty()) {
      candidates.push_back((lib / kShimName).string());
      candidates.push_back((lib / "loom" / kShimName).string());
    }
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) candidates.push_back((exe.parent_path() / kShimName).string());
    std::string errors;
    for (const auto& path : candidates) {
      if (!fs::exists(path)) continue;
      void* handle = ::dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!handle) {
        errors += std::string("; ") + ::dlerror();
        continue;
      }
      using Fn = const loom_spm_api* (*)();
      auto fn = reinterpret_cast<Fn>(::dlsym(handle, "loom_sentencepiece_api"));
      if (fn && fn()->version == spm::kApiVersion) return fn();
      errors += "; " + path + " has no matching loom_sentencepiece_api";
    }
    fail("cannot load the SentencePiece shim {} (looked in: {}; set LOOM_SENTENCEPIECE_SHIM to its path){}", kShimName,
         fmt::join(candidates, ", "), errors);
  }();
  return *loaded;
}

// Receives results from the shim; its callbacks copy them into this namespace's heap.
struct Sink {
  std::vector<int> ids;
  std::string text, error;
  static void on_ids(void* self, const int* ids, size_t n) { static_cast<Sink*>(self)->ids.assign(ids, ids + n); }
  static void on_text(void* self, const char* data, size_t n) { static_cast<Sink*>(self)->text.assign(data, n); }
  static void on_error(void* self, const char* data, size_t n) { static_cast<Sink*>(self)->error.assign(data, n); }
};

}  // namespace

void train_tokenizer(const std::string& train_txt, int vocab_size, const std::string& model_path) {
  if (!fs::exists(train_txt)) fail("tokenizer training text {} does not exist", train_txt);
  // Train under a temporary prefix and rename, so a crash never leaves a half-written model.
  const std::string tmp_prefix = model_path + ".tmp";
  // A map, not a command line, so paths with spaces survive.
  const std::unordered_map<std::string, std::string> args = {
      {"input", train_txt},
      {"model_prefix", tmp_prefix},
      {"vocab_size", std::to_string(vocab_size)},
      {"model_type", "bpe"},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"pad_id", "-1"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      // Deterministic: every line in file order (no sampling), fixed seed.
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"random_seed", "1234"},
      // Identity normalization keeps decode(encode(text)) == text for any valid UTF-8.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      // Austen's paragraphs run past the 4192-byte default; longer lines would be skipped.
      {"max_sentence_length", "65536"},
      {"num_threads", "2"}};
  std::vector<const char*> keys, values;
  for (const auto& [key, value] : args) {
    keys.push_back(key.c_str());
    values.push_back(value.c_str());
  }
  Sink sink;
  if (api().train(keys.data(), values.data(), keys.size(), Sink::on_error, &sink) != 0) {
    fail("training a {}-piece tokenizer on {} failed: {}", vocab_size, train_txt, sink.error);
  }
  fs::rename(tmp_prefix + ".model", model_path);
  fs::remove(tmp_prefix + ".vocab");
}

Tokenizer Tokenizer::load(const std::string& model_path) {
  std::ifstream in(model_path, std::ios::binary);
  if (!in) fail("cannot open tokenizer model {}", model_path);
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    if (fs::path(model_path).extension() == ".json") return from_bpe_json(ss.str());
    return from_bytes(ss.str());
  } catch (const Error& e) {
    fail("{}: {}", model_path, e.what());
  }
}

Tokenizer Tokenizer::from_bytes(const std::string& serialized_model) {
  const loom_spm_api& spm = api();
  Sink sink;
  void* processor = spm.load(serialized_model.data(), serialized_model.size(), Sink::on_error, &sink);
  if (!processor) fail("not a SentencePiece model ({})", sink.error);
  Tokenizer t;
  t.processor_ = std::shared_ptr<const void>(processor, spm.free);
  t.serialized_ = serialized_model;
  return t;
}

Tokenizer Tokenizer::from_bpe_json(const std::string& json_text) {
  Tokenizer t;
  t.bpe_ = std::make_shared<const BpeTokenizer>(BpeTokenizer::from_json(json_text));
  t.serialized_ = json_text;
  return t;
}

std::vector<int> Tokenizer::encode(std::string_view text) const {
  if (bpe_) return bpe_->encode(text, /*parse_special=*/true);
  Sink sink;
  if (api().encode(handle(), text.data(), text.size(), Sink::on_ids, Sink::on_error, &sink) != 0) {
    fail("tokenizer encode failed: {}", sink.error);
  }
  return std::move(sink.ids);
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  if (bpe_) return bpe_->decode(ids);
  const int n = vocab_size();
  for (int id : ids) {
    if (id < 0 || id >= n) fail("token id {} out of range for a vocabulary of {}", id, n);
  }
  Sink sink;
  if (api().decode(handle(), ids.data(), ids.size(), Sink::on_text, Sink::on_error, &sink) != 0) {
    fail("tokenizer decode failed: {}", sink.error);
  }
  return std::move(sink.text);
}

const void* Tokenizer::handle() const {
  if (!processor_) fail("tokenizer used before it was loaded");
  return processor_.get();
}

int Tokenizer::vocab_size() const { return bpe_ ? bpe_->vocab_size() : api().piece_size(handle()); }
int Tokenizer::bos_id() const { return bpe_ ? bpe_->bos_id() : api().bos_id(handle()); }
int Tokenizer::eos_id() const { return bpe_ ? bpe_->eos_id() : api().eos_id(handle()); }

std::vector<int> Tokenizer::prompt_prefix() const {
  if (!bpe_) return {eos_id()};
  if (bpe_->add_bos()) return {bpe_->bos_id()};
  return {};
}

const char* Tokenizer::file_name() const { return bpe_ ? "tokenizer.gguf.json" : "tokenizer.model"; }

}  // namespace loom
