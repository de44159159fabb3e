// The vocabulary inside a serialized SentencePiece ModelProto, read and written directly in the
// protobuf wire format (sentencepiece_model.proto), torch-free. Why not through libsentencepiece:
// Debian ships no sentencepiece_model.pb.h, and the processor API does not expose piece types
// such as USER_DEFINED. Used to export a loom tokenizer's pieces to GGUF and to rebuild a
// SentencePiece model from a GGUF `llama` vocabulary; Tokenizer::from_bytes then loads the result
// into the real SentencePiece, which validates it.
#pragma once
#include <string>
#include <vector>

namespace loom {

// SentencePiece::Type; llama.cpp's tokenizer.ggml.token_type uses the same codes.
enum class SpmPieceType : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct SpmPiece {
  std::string piece;
  float score = 0;
  SpmPieceType type = SpmPieceType::kNormal;
};

struct SpmVocab {
  std::vector<SpmPiece> pieces;  // index = token id
  int model_type = 2;            // TrainerSpec.ModelType: 1 unigram, 2 bpe, 3 word, 4 char
  bool byte_fallback = false;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;  // -1: none
  bool add_dummy_prefix = true;                         // NormalizerSpec: prepend a space ("▁") to the text
  bool remove_extra_whitespaces = false;
  std::string normalizer_name = "identity";
};

// The pieces, special ids and normalizer flags of a serialized ModelProto; loom::Error if the bytes
// are not a well-formed protobuf message.
SpmVocab parse_spm_model(const std::string& serialized);

// A minimal ModelProto: pieces, a TrainerSpec (model type, byte_fallback, special ids and pieces)
// and a NormalizerSpec without a precompiled character map (identity normalization).
std::string build_spm_model(const SpmVocab& vocab);

}  // namespace loom
