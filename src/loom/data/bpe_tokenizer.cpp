// Byte-level BPE: see bpe_tokenizer.h. The pre-tokenizer follows llama.cpp's hand-written GPT-2
// matcher (unicode.cpp, unicode_regex_split_custom_gpt2) step by step, because that, not the
// regex as Python's `regex` module reads it, is what the reference ids come from.
#include "loom/data/bpe_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "loom/core/error.h"

namespace loom {
namespace {

struct CodepointRange {
  uint32_t first, last;
};
#include "loom/data/unicode_ranges.inc"

template <size_t N>
bool in_ranges(const CodepointRange (&ranges)[N], uint32_t cp) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](uint32_t c, const CodepointRange& r) { return c < r.first; });
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}

bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(kLetterRanges, cp);
}
bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(kNumberRanges, cp);
}
// Unicode's White_Space property (PropList.txt), the set llama.cpp's \s matches.
bool is_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

constexpr uint32_t kReplacement = 0xFFFD;

// UTF-8 -> code points as llama.cpp's unicode_cpts_from_utf8 reads it: lenient about overlong
// forms, and a byte that starts no valid sequence becomes U+FFFD on its own.
std::vector<uint32_t> utf8_to_codepoints(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const auto cont = [&](size_t i) { return i < s.size() && (byte(i) & 0xC0) == 0x80; };
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t b = byte(i);
    if (!(b & 0x80)) {
      out.push_back(b);
      i += 1;
    } else if (!(b & 0x40)) {
      out.push_back(kReplacement);
      i += 1;
    } else if (!(b & 0x20)) {
      if (!cont(i + 1)) {
        out.push_back(kReplacement);
        i += 1;
        continue;
      }
      out.push_back(((b & 0x1Fu) << 6) | (byte(i + 1) & 0x3Fu));
      i += 2;
    } else if (!(b & 0x10)) {
      if (!cont(i + 1) || !cont(i + 2)) {
        out.push_back(kReplacement);
        i += 1;
        continue;
      }
      out.push_back(((b & 0x0Fu) << 12) | ((byte(i + 1) & 0x3Fu) << 6) | (byte(i + 2) & 0x3Fu));
      i += 3;
    } else if (!(b & 0x08)) {
      if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) {
        out.push_back(kReplacement);
        i += 1;
        continue;
      }
      out.push_back(((b & 0x07u) << 18) | ((byte(i + 1) & 0x3Fu) << 12) | ((byte(i + 2) & 0x3Fu) << 6) |
                    (byte(i + 3) & 0x3Fu));
      i += 4;
    } else {
      out.push_back(kReplacement);
      i += 1;
    }
  }
  return out;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp > 0x10FFFF) cp = kReplacement;
  if (cp <= 0x7F) {
    out += static_cast<char>(cp);
  } else if (cp <= 0x7FF) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp <= 0xFFFF) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes_to_unicode: the printable Latin-1 bytes stand for themselves, the other 68 bytes
// take the code points 256, 257, ... in byte order.
struct ByteMap {
  std::string to_text[256];
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      append_utf8(cp, to_text[b]);
      to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

// One piece [begin, end) of `cps` split by the GPT-2 regex; appends the piece lengths.
// Positions outside the piece read as "no character" (llama.cpp's OUT_OF_RANGE), which is how
// \s+(?!\S) sees the end of a piece.
void split_gpt2(const std::vector<uint32_t>& cps, size_t begin, size_t end, std::vector<size_t>& lengths) {
  constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  const auto at = [&](size_t p) { return p >= begin && p < end ? cps[p] : kNone; };
  const auto letter = [&](size_t p) { return at(p) != kNone && is_letter(cps[p]); };
  const auto number = [&](size_t p) { return at(p) != kNone && is_number(cps[p]); };
  const auto space = [&](size_t p) { return at(p) != kNone && is_whitespace(cps[p]); };
  const auto other = [&](size_t p) {  // [^\s\p{L}\p{N}]
    return at(p) != kNone && !is_whitespace(cps[p]) && !is_letter(cps[p]) && !is_number(cps[p]);
  };
  size_t prev = begin;
  const auto emit = [&](size_t p) {
    if (p > prev) lengths.push_back(p - prev);
    prev = p;
  };
  for (size_t pos = begin; pos < end;) {
    const uint32_t c = cps[pos];
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, ASCII apostrophe only)
    if (c == '\'' && pos + 1 < end) {
      const uint32_t n1 = cps[pos + 1];
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
        emit(pos + 2);
        pos += 2;
        continue;
      }
      if (pos + 2 < end) {
        const uint32_t n2 = cps[pos + 2];
        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
          emit(pos + 3);
          pos += 3;
          continue;
        }
      }
    }
    // An optional leading ' ' then a run of one class: ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+
    const size_t q = c == ' ' ? pos + 1 : pos;
    if (letter(q) || number(q) || other(q)) {
      const int kind = letter(q) ? 0 : number(q) ? 1 : 2;
      const auto same = [&](size_t p) { return kind == 0 ? letter(p) : kind == 1 ? number(p) : other(p); };
      size_t p = q;
      while (same(p)) ++p;
      emit(p);
      pos = p;
      continue;
    }
    size_t n_space = 0;
    while (space(pos + n_space)) ++n_space;
    // \s+(?!\S): a whitespace run followed by more text leaves its last character to the next
    // piece (where ' ' joins a word; any other whitespace becomes a piece of its own).
    if (n_space > 1 && at(pos + n_space) != kNone) {
      pos += n_space - 1;
      emit(pos);
      continue;
    }
    if (n_space > 0) {  // \s+
      pos += n_space;
      emit(pos);
      continue;
    }
    emit(++pos);  // no alternative matches: one code point alone (llama.cpp does the same)
  }
}

bool pre_splits_digits(const std::string& pre) {
  static const char* const kDigitFirst[] = {"smollm",    "starcoder", "refact", "command-r",
                                            "codeshell", "exaone",    "minerva"};
  for (const char* name : kDigitFirst)
    if (pre == name) return true;
  if (pre == "gpt2" || pre == "default" || pre == "mpt" || pre == "olmo" || pre == "jais") return false;
  fail("BPE pre-tokenizer '{}' is not supported (known: gpt2, smollm and the ones that share their regexes)", pre);
}

std::vector<size_t> pretokenize_lengths(const std::vector<uint32_t>& cps, const std::string& pre) {
  std::vector<size_t> pieces;
  if (pre_splits_digits(pre)) {
    // \p{N}: every number code point is a piece; the text between numbers is one piece each.
    size_t run = 0;
    for (size_t i = 0; i < cps.size(); ++i) {
      if (is_number(cps[i])) {
        if (i > run) pieces.push_back(i - run);
        pieces.push_back(1);
        run = i + 1;
      }
    }
    if (cps.size() > run) pieces.push_back(cps.size() - run);
  } else if (!cps.empty()) {
    pieces.push_back(cps.size());
  }
  std::vector<size_t> lengths;
  size_t begin = 0;
  for (size_t n : pieces) {
    split_gpt2(cps, begin, begin + n, lengths);
    begin += n;
  }
  return lengths;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::vector<std::string> bpe_pretokenize(std::string_view text, const std::string& pre) {
  const std::vector<uint32_t> cps = utf8_to_codepoints(text);
  std::vector<std::string> words;
  size_t begin = 0;
  for (size_t n : pretokenize_lengths(cps, pre)) {
    std::string word;
    for (size_t i = begin; i < begin + n; ++i) append_utf8(cps[i], word);
    words.push_back(std::move(word));
    begin += n;
  }
  return words;
}

BpeTokenizer BpeTokenizer::load(const std::string& json_path) {
  try {
    return from_json(read_text_file(json_path));
  } catch (const Error& e) {
    fail("{}: {}", json_path, e.what());
  }
}

BpeTokenizer BpeTokenizer::from_json(const std::string& json_text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail("not a BPE tokenizer JSON ({})", e.what());
  }
  if (!j.is_object()) fail("not a BPE tokenizer JSON (an object with tokens and merges)");
  try {
    return from_fields(j);
  } catch (const nlohmann::json::exception& e) {  // a field of the wrong type or a missing one
    fail("not a BPE tokenizer JSON ({})", e.what());
  }
}

namespace {

// An integer field (or array element): JSON's own conversion of a float out of int's range is
// undefined behaviour, so anything but an integer in range is refused first.
int integer(const nlohmann::json& value, const char* what) {
  if (!value.is_number_integer() || value.get<int64_t>() < std::numeric_limits<int>::min() ||
      value.get<int64_t>() > std::numeric_limits<int>::max())
    fail("not a BPE tokenizer JSON ({} must be an integer, got {})", what, value.dump().substr(0, 40));
  return static_cast<int>(value.get<int64_t>());
}

int integer_or(const nlohmann::json& j, const char* key, int fallback) {
  return j.contains(key) ? integer(j.at(key), key) : fallback;
}

}  // namespace

BpeTokenizer BpeTokenizer::from_fields(const nlohmann::json& j) {
  if (j.value("model", std::string()) != "gpt2")
    fail("tokenizer model '{}' is not a byte-level BPE (\"gpt2\")", j.value("model", std::string()));
  BpeTokenizer t;
  t.pre_ = j.value("pre", std::string("default"));
  pre_splits_digits(t.pre_);  // an unknown pre-tokenizer fails now, not at the first encode
  t.tokens_ = j.at("tokens").get<std::vector<std::string>>();
  const int n = static_cast<int>(t.tokens_.size());
  t.types_.assign(n, BpeTokenType::kNormal);
  if (j.contains("token_type")) {
    const auto& types = j.at("token_type");
    if (!types.is_array() || static_cast<int>(types.size()) != n)
      fail("{} token types for {} tokens", types.is_array() ? types.size() : 0, n);
    for (int i = 0; i < n; ++i) t.types_[i] = static_cast<BpeTokenType>(integer(types[i], "token_type"));
  }
  for (int i = 0; i < n; ++i) t.token_ids_.emplace(t.tokens_[i], i);
  const auto merges = j.at("merges").get<std::vector<std::string>>();
  for (size_t r = 0; r < merges.size(); ++r) t.merge_ranks_.emplace(merges[r], static_cast<int>(r));
  t.bos_id_ = integer_or(j, "bos_token_id", -1);
  t.eos_id_ = integer_or(j, "eos_token_id", -1);
  t.add_bos_ = j.value("add_bos_token", false);
  for (int id : {t.bos_id_, t.eos_id_})
    if (id < -1 || id >= n) fail("special token id {} out of range for {} tokens", id, n);
  for (int i = 0; i < n; ++i) {
    const BpeTokenType type = t.types_[i];
    if (type == BpeTokenType::kControl || type == BpeTokenType::kUserDefined || type == BpeTokenType::kUnknown)
      if (!t.tokens_[i].empty()) t.specials_.push_back(i);
  }
  std::stable_sort(t.specials_.begin(), t.specials_.end(),
                   [&](int a, int b) { return t.tokens_[a].size() > t.tokens_[b].size(); });
  return t;
}

void BpeTokenizer::bpe_word(const std::string& word, std::vector<int>& out) const {
  // Symbols: the byte-mapped characters of the word's UTF-8.
  const ByteMap& bytes = byte_map();
  std::vector<std::string> symbols;
  symbols.reserve(word.size());
  for (unsigned char b : word) symbols.push_back(bytes.to_text[b]);
  // Merge the adjacent pair of lowest rank (leftmost on ties) until no pair is a merge.
  while (symbols.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merge_ranks_.find(symbols[i] + " " + symbols[i + 1]);
      if (it != merge_ranks_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == std::numeric_limits<int>::max()) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  for (const std::string& s : symbols) {
    auto it = token_ids_.find(s);
    if (it == token_ids_.end()) fail("BPE symbol '{}' is not in the vocabulary", s);
    out.push_back(it->second);
  }
}

std::vector<int> BpeTokenizer::encode(std::string_view text, bool parse_special) const {
  // Fragments of the text: raw text (id -1) or one special token, in text order.
  struct Fragment {
    int id;
    std::string_view raw;
  };
  std::vector<Fragment> fragments{{-1, text}};
  for (int id : specials_) {
    if (!parse_special && types_[id] != BpeTokenType::kUserDefined) continue;
    const std::string& needle = tokens_[id];
    std::vector<Fragment> next;
    for (const Fragment& f : fragments) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      std::string_view rest = f.raw;
      for (size_t at; (at = rest.find(needle)) != std::string_view::npos;) {
        if (at > 0) next.push_back({-1, rest.substr(0, at)});
        next.push_back({id, {}});
        rest = rest.substr(at + needle.size());
      }
      if (!rest.empty()) next.push_back({-1, rest});
    }
    fragments = std::move(next);
  }
  std::vector<int> ids;
  for (const Fragment& f : fragments) {
    if (f.id >= 0) {
      ids.push_back(f.id);
      continue;
    }
    for (const std::string& word : bpe_pretokenize(f.raw, pre_)) bpe_word(word, ids);
  }
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int>& ids) const {
  const ByteMap& bytes = byte_map();
  std::string out;
  for (int id : ids) {
    if (id < 0 || id >= vocab_size()) fail("token id {} out of range for a vocabulary of {}", id, vocab_size());
    switch (types_[id]) {
      case BpeTokenType::kNormal:
        for (uint32_t cp : utf8_to_codepoints(tokens_[id])) {
          auto it = bytes.to_byte.find(cp);
          if (it == bytes.to_byte.end()) fail("token {} holds U+{:04X}, not a byte-level character", id, cp);
          out += static_cast<char>(it->second);
        }
        break;
      case BpeTokenType::kUserDefined: out += tokens_[id]; break;
      default:  // control, unknown, unused: no text, as llama.cpp's token_to_piece(special=false)
        break;
    }
  }
  return out;
}

}  // namespace loom
