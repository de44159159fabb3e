// The SentencePiece shim module (see spm_api.h): the only code that links libsentencepiece.
// It runs in its own link namespace, so nothing may throw out of it.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <exception>
#include <string>
#include <unordered_map>
#include <vector>

#include "loom/data/spm_shim/spm_api.h"

namespace {

using sentencepiece::SentencePieceProcessor;

const SentencePieceProcessor& sp(const void* p) { return *static_cast<const SentencePieceProcessor*>(p); }

int report(const std::string& message, loom_spm_bytes_sink error, void* ctx) {
  error(ctx, message.data(), message.size());
  return 1;
}

template <class F>
int guarded(F&& f, loom_spm_bytes_sink error, void* ctx) {
  try {
    const auto status = f();
    return status.ok() ? 0 : report(status.ToString(), error, ctx);
  } catch (const std::exception& e) {
    return report(e.what(), error, ctx);
  }
}

}  // namespace

// Exported by libsentencepiece but not declared in its public headers: the level below which
// its LOG(INFO) lines are dropped (training prints hundreds).
namespace sentencepiece::logging {
void SetMinLogLevel(int v);
}  // namespace sentencepiece::logging

namespace {

int train(const char* const* keys, const char* const* values, size_t n, loom_spm_bytes_sink error, void* ctx) {
  return guarded(
      [&] {
        std::unordered_map<std::string, std::string> spec;
        for (size_t i = 0; i < n; ++i) spec[keys[i]] = values[i];
        // "random_seed" is not a TrainerSpec field: like spm_train, set sentencepiece's generator.
        if (auto it = spec.find("random_seed"); it != spec.end()) {
          sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned>(std::stoul(it->second)));
          spec.erase(it);
        }
        sentencepiece::logging::SetMinLogLevel(1);  // warnings and errors only
        return sentencepiece::SentencePieceTrainer::Train(spec);
      },
      error, ctx);
}

void* load(const char* model, size_t n, loom_spm_bytes_sink error, void* ctx) {
  auto* p = new SentencePieceProcessor;
  if (guarded([&] { return p->LoadFromSerializedProto({model, n}); }, error, ctx) == 0) return p;
  delete p;
  return nullptr;
}

void free_processor(void* p) { delete static_cast<SentencePieceProcessor*>(p); }

int encode(const void* p, const char* text, size_t n, loom_spm_ints_sink out, loom_spm_bytes_sink error, void* ctx) {
  std::vector<int> ids;
  const int rc = guarded([&] { return sp(p).Encode({text, n}, &ids); }, error, ctx);
  if (rc == 0) out(ctx, ids.data(), ids.size());
  return rc;
}

int decode(const void* p, const int* ids, size_t n, loom_spm_bytes_sink out, loom_spm_bytes_sink error, void* ctx) {
  std::string text;
  const int rc = guarded([&] { return sp(p).Decode(std::vector<int>(ids, ids + n), &text); }, error, ctx);
  if (rc == 0) out(ctx, text.data(), text.size());
  return rc;
}

int piece_size(const void* p) { return sp(p).GetPieceSize(); }
int bos_id(const void* p) { return sp(p).bos_id(); }
int eos_id(const void* p) { return sp(p).eos_id(); }

}  // namespace

extern "C" const loom_spm_api* loom_sentencepiece_api(void) {
  static const loom_spm_api api = {
      loom::spm::kApiVersion, train, load, free_processor, encode, decode, piece_size, bos_id, eos_id};
  return &api;
}
