// The C table of SentencePiece entry points exported by the shim module libloom_sentencepiece.so.
// Why a shim: Debian's libsentencepiece embeds and exports its own protobuf-lite 3.14, while
// libtorch needs libprotobuf 3.21; in one symbol namespace either libtorch's start-up or
// sentencepiece's protobuf version check aborts. RTLD_DEEPBIND is not enough either (executables
// copy-relocate std::cerr, which a deep-bound library then sees uninitialized). So tokenizer.cpp
// loads the shim with dlmopen(LM_ID_NEWLM): a separate link namespace with its own protobuf, C++
// runtime and heap. Hence a C interface: no exceptions and no heap ownership cross it; results
// come back through callbacks that copy them out.
#pragma once
#include <cstddef>

extern "C" {

typedef void (*loom_spm_ints_sink)(void* ctx, const int* ids, size_t n);
typedef void (*loom_spm_bytes_sink)(void* ctx, const char* data, size_t n);

// Functions returning int return 0 on success, else non-zero after passing the error message to
// `error` (with `ctx`).
struct loom_spm_api {
  int version;
  int (*train)(const char* const* keys, const char* const* values, size_t n, loom_spm_bytes_sink error, void* ctx);
  void* (*load)(const char* model, size_t n, loom_spm_bytes_sink error, void* ctx);  // NULL on error
  void (*free)(void* processor);
  int (*encode)(const void* processor, const char* text, size_t n, loom_spm_ints_sink ids, loom_spm_bytes_sink error,
                void* ctx);
  int (*decode)(const void* processor, const int* ids, size_t n, loom_spm_bytes_sink text, loom_spm_bytes_sink error,
                void* ctx);
  int (*piece_size)(const void* processor);
  int (*bos_id)(const void* processor);
  int (*eos_id)(const void* processor);
};

const struct loom_spm_api* loom_sentencepiece_api(void);
}

namespace loom::spm {
constexpr int kApiVersion = 2;
}
