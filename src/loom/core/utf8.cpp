#include "loom/core/utf8.h"

namespace loom {

namespace {

// The well-formed sequence starting at text[at]: its length (> 0); or -k when its first k bytes
// (k >= 1) are a maximal ill-formed subpart; or 0 when the text ends inside a sequence that could
// still be completed. The byte ranges are Unicode's Table 3-7.
int sequence_at(std::string_view text, size_t at) {
  const auto b0 = static_cast<unsigned char>(text[at]);
  if (b0 < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 1;
  else if (b0 == 0xE0) need = 2, lo = 0xA0;
  else if (b0 == 0xED) need = 2, hi = 0x9F;
  else if (b0 >= 0xE1 && b0 <= 0xEF) need = 2;
  else if (b0 == 0xF0) need = 3, lo = 0x90;
  else if (b0 == 0xF4) need = 3, hi = 0x8F;
  else if (b0 >= 0xF1 && b0 <= 0xF3) need = 3;
  else return -1;  // a continuation byte, C0, C1 or F5..FF: never starts a sequence
  for (int i = 1; i <= need; ++i) {
    if (at + i >= text.size()) return 0;
    const auto b = static_cast<unsigned char>(text[at + i]);
    const bool ok = i == 1 ? b >= lo && b <= hi : b >= 0x80 && b <= 0xBF;
    if (!ok) return -i;
  }
  return need + 1;
}

}  // namespace

size_t utf8_invalid_at(std::string_view text) {
  for (size_t at = 0; at < text.size();) {
    const int n = sequence_at(text, at);
    if (n <= 0) return at;
    at += static_cast<size_t>(n);
  }
  return std::string_view::npos;
}

size_t utf8_complete_prefix(std::string_view text) {
  size_t at = 0;
  while (at < text.size()) {
    const int n = sequence_at(text, at);
    if (n == 0) return at;
    at += static_cast<size_t>(n > 0 ? n : -n);
  }
  return at;
}

std::string utf8_repair(std::string_view text) {
  if (utf8_invalid_at(text) == std::string_view::npos) return std::string(text);
  std::string out;
  out.reserve(text.size() + 8);
  for (size_t at = 0; at < text.size();) {
    const int n = sequence_at(text, at);
    if (n > 0) {
      out.append(text.substr(at, static_cast<size_t>(n)));
      at += static_cast<size_t>(n);
    } else {
      out += "\xEF\xBF\xBD";
      at = n == 0 ? text.size() : at + static_cast<size_t>(-n);
    }
  }
  return out;
}

}  // namespace loom
