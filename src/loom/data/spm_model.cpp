// Field numbers from sentencepiece_model.proto (google/sentencepiece, src/sentencepiece_model.proto):
//   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
//   SentencePiece   1 piece (string), 2 score (float), 3 type (enum, default NORMAL)
//   TrainerSpec     3 model_type, 4 vocab_size, 35 byte_fallback, 40 unk_id, 41 bos_id, 42 eos_id,
//                   43 pad_id, 45 unk_piece, 46 bos_piece, 47 eos_piece, 48 pad_piece
//   NormalizerSpec  1 name, 3 add_dummy_prefix (default true), 4 remove_extra_whitespaces
//                   (default true), 5 escape_whitespaces (default true)
#include "loom/data/spm_model.h"

#include <cstdint>
#include <cstring>

#include "loom/core/error.h"

namespace loom {
namespace {

enum WireType { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), end_(p + n) {}
  bool done() const { return p_ == end_; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) fail("SentencePiece model: truncated varint");
      const auto byte = static_cast<uint8_t>(*p_++);
      v |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return v;
    }
    fail("SentencePiece model: varint longer than 10 bytes");
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > static_cast<uint64_t>(end_ - p_)) fail("SentencePiece model: truncated field");
    std::string_view s(p_, n);
    p_ += n;
    return s;
  }
  uint32_t fixed32() {
    if (end_ - p_ < 4) fail("SentencePiece model: truncated field");
    uint32_t v;
    std::memcpy(&v, p_, 4);
    p_ += 4;
    return v;
  }
  void skip(int wire_type) {
    switch (wire_type) {
      case kVarint: varint(); break;
      case kFixed64:
        if (end_ - p_ < 8) fail("SentencePiece model: truncated field");
        p_ += 8;
        break;
      case kBytes: bytes(); break;
      case kFixed32: fixed32(); break;
      default: fail("SentencePiece model: unsupported wire type {}", wire_type);
    }
  }

 private:
  const char* p_;
  const char* end_;
};

// Calls f(field, wire_type, reader) for each field of the message; f consumes the value or
// returns false to have it skipped.
template <class F>
void for_each_field(std::string_view message, F&& f) {
  Reader r(message.data(), message.size());
  while (!r.done()) {
    const uint64_t key = r.varint();
    const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (!f(field, wire, r)) r.skip(wire);
  }
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, int field, WireType wire) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | wire);
}
// int32 fields encode negative values as 10-byte sign-extended varints.
void put_int(std::string& out, int field, int64_t v) {
  put_key(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(v));
}
void put_bytes(std::string& out, int field, std::string_view s) {
  put_key(out, field, kBytes);
  put_varint(out, s.size());
  out.append(s.data(), s.size());
}
void put_float(std::string& out, int field, float v) {
  put_key(out, field, kFixed32);
  char b[4];
  std::memcpy(b, &v, 4);
  out.append(b, 4);
}

}  // namespace

SpmVocab parse_spm_model(const std::string& serialized) {
  SpmVocab vocab;
  vocab.model_type = 1;                   // proto default (UNIGRAM)
  vocab.remove_extra_whitespaces = true;  // proto default
  vocab.normalizer_name.clear();
  auto as_int = [](uint64_t v) { return static_cast<int>(static_cast<int64_t>(v)); };
  for_each_field(serialized, [&](int field, int wire, Reader& r) {
    if (field == 1 && wire == kBytes) {
      SpmPiece piece;
      for_each_field(r.bytes(), [&](int f, int w, Reader& pr) {
        if (f == 1 && w == kBytes) piece.piece = std::string(pr.bytes());
        else if (f == 2 && w == kFixed32) {
          const uint32_t bits = pr.fixed32();
          std::memcpy(&piece.score, &bits, 4);
        } else if (f == 3 && w == kVarint) piece.type = static_cast<SpmPieceType>(as_int(pr.varint()));
        else return false;
        return true;
      });
      vocab.pieces.push_back(std::move(piece));
    } else if (field == 2 && wire == kBytes) {
      for_each_field(r.bytes(), [&](int f, int w, Reader& tr) {
        if (w != kVarint) return false;
        switch (f) {
          case 3: vocab.model_type = as_int(tr.varint()); return true;
          case 35: vocab.byte_fallback = tr.varint() != 0; return true;
          case 40: vocab.unk_id = as_int(tr.varint()); return true;
          case 41: vocab.bos_id = as_int(tr.varint()); return true;
          case 42: vocab.eos_id = as_int(tr.varint()); return true;
          case 43: vocab.pad_id = as_int(tr.varint()); return true;
          default: return false;
        }
      });
    } else if (field == 3 && wire == kBytes) {
      for_each_field(r.bytes(), [&](int f, int w, Reader& nr) {
        if (f == 1 && w == kBytes) vocab.normalizer_name = std::string(nr.bytes());
        else if (f == 3 && w == kVarint) vocab.add_dummy_prefix = nr.varint() != 0;
        else if (f == 4 && w == kVarint) vocab.remove_extra_whitespaces = nr.varint() != 0;
        else return false;
        return true;
      });
    } else {
      return false;
    }
    return true;
  });
  if (vocab.pieces.empty()) fail("SentencePiece model has no pieces");
  return vocab;
}

std::string build_spm_model(const SpmVocab& vocab) {
  const int n = static_cast<int>(vocab.pieces.size());
  auto piece_of = [&](int id) { return id >= 0 && id < n ? vocab.pieces[id].piece : std::string(); };
  std::string out;
  for (const auto& p : vocab.pieces) {
    std::string piece;
    put_bytes(piece, 1, p.piece);
    put_float(piece, 2, p.score);
    put_int(piece, 3, static_cast<int>(p.type));
    put_bytes(out, 1, piece);
  }
  std::string trainer;
  put_int(trainer, 3, vocab.model_type);
  put_int(trainer, 4, n);
  put_int(trainer, 35, vocab.byte_fallback);
  put_int(trainer, 40, vocab.unk_id);
  put_int(trainer, 41, vocab.bos_id);
  put_int(trainer, 42, vocab.eos_id);
  put_int(trainer, 43, vocab.pad_id);
  // The processor finds its special ids by these piece strings (defaults <unk>, <s>, </s>, <pad>).
  if (vocab.unk_id >= 0) put_bytes(trainer, 45, piece_of(vocab.unk_id));
  if (vocab.bos_id >= 0) put_bytes(trainer, 46, piece_of(vocab.bos_id));
  if (vocab.eos_id >= 0) put_bytes(trainer, 47, piece_of(vocab.eos_id));
  if (vocab.pad_id >= 0) put_bytes(trainer, 48, piece_of(vocab.pad_id));
  put_bytes(out, 2, trainer);
  std::string normalizer;
  put_bytes(normalizer, 1, vocab.normalizer_name.empty() ? "identity" : vocab.normalizer_name);
  put_int(normalizer, 3, vocab.add_dummy_prefix);
  put_int(normalizer, 4, vocab.remove_extra_whitespaces);
  put_int(normalizer, 5, 1);  // escape_whitespaces: spaces become "▁"
  put_bytes(out, 3, normalizer);
  return out;
}

}  // namespace loom
