// Parallel corpora (see parallel.h and docs/data.md). Plain C++ without torch, so the conversion
// compiles and runs on its own (g++ parallel.cpp + a main) in seconds.
#include "loom/data/parallel.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "loom/core/error.h"
#include "loom/core/log.h"

namespace fs = std::filesystem;

namespace loom {
namespace parallel {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }
bool is_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }
std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// ---- a small HTML tag reader: enough for the generated LibreOffice help pages ----

struct Tag {
  std::string name;  // lower case; empty for a comment, doctype or stray '<'
  bool closing = false;
  std::map<std::string, std::string> attrs;
  size_t end = 0;  // one past the '>'
};

// Reads the tag starting at html[pos] == '<'.
Tag read_tag(std::string_view html, size_t pos) {
  Tag tag;
  if (html.compare(pos, 4, "<!--") == 0) {
    const size_t e = html.find("-->", pos + 4);
    tag.end = e == std::string_view::npos ? html.size() : e + 3;
    return tag;
  }
  size_t i = pos + 1;
  if (i < html.size() && html[i] == '/') {
    tag.closing = true;
    ++i;
  }
  const size_t name_begin = i;
  while (i < html.size() && is_alnum(html[i])) ++i;
  tag.name = lower(html.substr(name_begin, i - name_begin));
  if (tag.name.empty() && !tag.closing && (i >= html.size() || html[i] != '!')) {
    tag.end = pos + 1;  // a literal '<' in text
    return tag;
  }
  // Attributes: name, name=value, name="value", name='value'.
  while (i < html.size() && html[i] != '>') {
    if (is_space(html[i]) || html[i] == '/') {
      ++i;
      continue;
    }
    const size_t a = i;
    while (i < html.size() && !is_space(html[i]) && html[i] != '=' && html[i] != '>') ++i;
    std::string attr = lower(html.substr(a, i - a));
    std::string value;
    if (i < html.size() && html[i] == '=') {
      ++i;
      if (i < html.size() && (html[i] == '"' || html[i] == '\'')) {
        const char quote = html[i++];
        const size_t v = i;
        while (i < html.size() && html[i] != quote) ++i;
        value = std::string(html.substr(v, i - v));
        if (i < html.size()) ++i;
      } else {
        const size_t v = i;
        while (i < html.size() && !is_space(html[i]) && html[i] != '>') ++i;
        value = std::string(html.substr(v, i - v));
      }
    }
    tag.attrs.emplace(std::move(attr), std::move(value));
  }
  tag.end = i < html.size() ? i + 1 : html.size();
  return tag;
}

// The position of the '<' of the end tag that closes element `name` whose content starts at
// `from` (nested elements of the same name are counted); html.size() if unclosed.
size_t find_close(std::string_view html, size_t from, const std::string& name) {
  int depth = 1;
  size_t pos = from;
  while ((pos = html.find('<', pos)) != std::string_view::npos) {
    const Tag t = read_tag(html, pos);
    if (t.name == name) {
      depth += t.closing ? -1 : 1;
      if (depth == 0) return pos;
    }
    pos = std::max(t.end, pos + 1);
  }
  return html.size();
}

bool is_void(const std::string& name) {
  return name == "br" || name == "img" || name == "input" || name == "meta" || name == "link" || name == "hr" ||
         name == "wbr" || name == "source";
}
bool is_block(const std::string& name) {
  static const char* kBlocks[] = {"p",  "div", "li", "td", "th", "tr", "table", "ul", "ol", "h1",
                                  "h2", "h3",  "h4", "h5", "h6", "h",  "pre",   "br", "dd", "dt"};
  for (const char* b : kBlocks)
    if (name == b) return true;
  return false;
}
bool is_paragraph(const std::string& name) {
  return name == "p" || name == "h" || (name.size() == 2 && name[0] == 'h' && name[1] >= '1' && name[1] <= '6');
}

}  // namespace

std::string unescape_entities(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '&') {
      out += text[i];
      continue;
    }
    const size_t semi = text.find(';', i);
    if (semi == std::string_view::npos || semi - i > 12) {
      out += '&';
      continue;
    }
    const std::string_view name = text.substr(i + 1, semi - i - 1);
    static const std::pair<const char*, uint32_t> kNamed[] = {{"amp", '&'},  {"lt", '<'},    {"gt", '>'},
                                                              {"quot", '"'}, {"apos", '\''}, {"nbsp", 0xA0}};
    uint32_t cp = 0;
    bool ok = false;
    for (const auto& [n, c] : kNamed) {
      if (name == n) {
        cp = c;
        ok = true;
      }
    }
    if (!ok && name.size() >= 2 && name[0] == '#') {
      const bool hex = name[1] == 'x' || name[1] == 'X';
      const std::string digits(name.substr(hex ? 2 : 1));
      char* end = nullptr;
      const unsigned long v = std::strtoul(digits.c_str(), &end, hex ? 16 : 10);
      ok = !digits.empty() && *end == '\0' && v > 0 && v <= 0x10FFFF;
      cp = uint32_t(v);
    }
    if (!ok) {
      out += '&';
      continue;
    }
    append_utf8(out, cp);
    i = semi;
  }
  return out;
}

std::string normalize_space(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const bool nbsp = uint8_t(text[i]) == 0xC2 && i + 1 < text.size() && uint8_t(text[i + 1]) == 0xA0;
    if (is_space(text[i]) || nbsp) {
      pending = true;
      i += nbsp;
      continue;
    }
    if (pending && !out.empty()) out += ' ';
    pending = false;
    out += text[i];
  }
  return out;
}

std::string strip_markup(std::string_view html) {
  std::string text;
  size_t pos = 0;
  while (pos < html.size()) {
    const size_t lt = html.find('<', pos);
    text.append(html.substr(pos, lt == std::string_view::npos ? std::string_view::npos : lt - pos));
    if (lt == std::string_view::npos) break;
    const Tag t = read_tag(html, lt);
    pos = std::max(t.end, lt + 1);
    if (t.name.empty() && t.end == lt + 1) {  // a literal '<'
      text += '<';
      continue;
    }
    if (t.closing) {
      if (is_block(t.name)) text += ' ';
      continue;
    }
    const auto hidden = t.attrs.find("hidden");
    const auto id = t.attrs.find("id");
    const bool other_variant = hidden != t.attrs.end() && (id == t.attrs.end() || id->second.rfind("default", 0) != 0);
    if (!t.name.empty() && !is_void(t.name) && (other_variant || t.name == "script" || t.name == "style")) {
      const size_t close = find_close(html, pos, t.name);
      pos = close < html.size() ? read_tag(html, close).end : html.size();
      continue;
    }
    if (is_block(t.name)) text += ' ';
  }
  return normalize_space(unescape_entities(text));
}

std::vector<HelpParagraph> help_paragraphs(std::string_view html) {
  // The page body only: the header, navigation and debug footer are the same in every page.
  size_t begin = html.find("id=\"DisplayArea\"");
  begin = begin == std::string_view::npos ? 0 : begin;
  size_t end = html.size();
  for (const char* marker : {"<div id=\"SearchFrame\"", "<footer"}) {
    const size_t m = html.find(marker, begin);
    if (m != std::string_view::npos) end = std::min(end, m);
  }
  const std::string_view body = html.substr(0, end);

  std::vector<HelpParagraph> out;
  std::unordered_map<std::string, int> seen;
  size_t pos = begin;
  while ((pos = body.find('<', pos)) != std::string_view::npos) {
    const Tag t = read_tag(body, pos);
    pos = std::max(t.end, pos + 1);
    if (t.closing || !is_paragraph(t.name)) continue;
    const auto id = t.attrs.find("id");
    if (id == t.attrs.end() || id->second.empty()) continue;
    const size_t close = find_close(body, pos, t.name);
    const auto cls = t.attrs.find("class");
    const bool code =
        cls != t.attrs.end() && (cls->second == "code" || cls->second == "codeintable" || cls->second == "smathcode");
    if (!code) {
      const int n = ++seen[id->second];
      out.push_back(
          {n == 1 ? id->second : fmt::format("{}#{}", id->second, n), strip_markup(body.substr(pos, close - pos))});
    }
    pos = close;
  }
  return out;
}

std::vector<Pair> align_help_page(std::string_view en_html, std::string_view de_html, const std::string& doc) {
  std::unordered_map<std::string, std::string> de;
  for (auto& p : help_paragraphs(de_html)) de.emplace(std::move(p.key), std::move(p.text));
  std::vector<Pair> out;
  for (auto& p : help_paragraphs(en_html)) {
    const auto it = de.find(p.key);
    if (it != de.end()) out.push_back({std::move(p.text), it->second, doc});
  }
  return out;
}

// ---- trans-de-en ----

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split_on(std::string_view s, std::string_view sep) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (true) {
    const size_t next = s.find(sep, pos);
    out.push_back(s.substr(pos, next == std::string_view::npos ? std::string_view::npos : next - pos));
    if (next == std::string_view::npos) return out;
    pos = next + sep.size();
  }
}

// Removes the dictionary's annotations: {f} {vt} (grammar), [ugs.] [Br.] (usage), <Aalmolch>
// (spellings for search), and with `parentheses` also (explanations).
std::string strip_annotations(std::string_view s, bool parentheses) {
  std::string out;
  int depth = 0;
  for (char c : s) {
    const bool open = c == '{' || c == '[' || c == '<' || (parentheses && c == '(');
    const bool close = c == '}' || c == ']' || c == '>' || (parentheses && c == ')');
    if (open) {
      ++depth;
    } else if (close && depth > 0) {
      --depth;
    } else if (depth == 0) {
      out += c;
    }
  }
  return normalize_space(out);
}

// The synonyms of one sense, annotations removed.
std::vector<std::string> synonyms(std::string_view sense) {
  std::vector<std::string> out;
  const std::string text = strip_annotations(sense, false);
  for (std::string_view s : split_on(text, ";")) {
    // The sense was normalized as a whole; "a.; b." splits into "a." and " b.".
    const std::string_view t = trim(s);
    if (!t.empty()) out.emplace_back(t);
  }
  return out;
}

bool starts_upper(std::string_view s) {
  if (s.empty()) return false;
  const unsigned char c = s[0];
  if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '"' || c == '\'') return true;
  // Two-byte Latin-1 capitals À..Þ (U+00C0..U+00DE, except ×).
  if (c == 0xC3 && s.size() > 1) {
    const unsigned char d = s[1];
    return d >= 0x80 && d <= 0x9E && d != 0x97;
  }
  // Opening quotes „ “ ‚ ‘ » « (U+201E U+201C U+201A U+2018, U+00BB U+00AB).
  for (const char* q : {"\u201E", "\u201C", "\u201A", "\u2018", "\u00BB", "\u00AB"})
    if (s.rfind(q, 0) == 0) return true;
  return false;
}

bool ends_sentence(std::string_view s) {
  // Closing quotes and parentheses may follow the final punctuation.
  bool stripped = true;
  while (stripped && !s.empty()) {
    stripped = false;
    for (const char* q : {"\"", "'", ")", "\u201C", "\u201D", "\u2019", "\u2018", "\u00AB", "\u00BB"}) {
      const size_t n = std::strlen(q);
      if (s.size() > n && s.substr(s.size() - n) == q) {
        s.remove_suffix(n);
        stripped = true;
      }
    }
  }
  return !s.empty() && (s.back() == '.' || s.back() == '!' || s.back() == '?');
}

}  // namespace

bool sentence_like(std::string_view text) {
  const std::string_view s = trim(text);
  if (!starts_upper(s) || !ends_sentence(s)) return false;
  if (s.find('/') != std::string_view::npos || s.find("\u2026") != std::string_view::npos ||
      s.find("...") != std::string_view::npos) {
    return false;
  }
  size_t words = 0;
  for (std::string_view w : split_on(s, " ")) {
    if (w.empty()) continue;
    ++words;
    // Placeholders of dictionary templates: "jdm. etw. geben", "to give sb. sth.".
    static const char* kPlaceholders[] = {"etw.", "jdm.",  "jdn.",       "jds.",   "jd.",        "sth.",
                                          "sb.",  "sb.'s", "sb.\u2019s", "sth.'s", "sth.\u2019s"};
    for (const char* p : kPlaceholders)
      if (w == p) return false;
  }
  return words >= kMinSentenceWords;
}

std::vector<Pair> parse_trans_line(std::string_view line, TransStats* stats) {
  line = trim(line);
  if (line.empty() || line[0] == '#') return {};
  ++stats->lines;
  const auto sides = split_on(line, " :: ");
  if (sides.size() != 2) {
    ++stats->malformed;
    return {};
  }
  const auto de_senses = split_on(sides[0], " | ");
  const auto en_senses = split_on(sides[1], " | ");
  if (de_senses.size() != en_senses.size()) {
    ++stats->sense_count_mismatch;
    return {};
  }
  const std::string head = strip_annotations(de_senses[0], true);
  const std::string doc = "trans-de-en/" + std::string(trim(split_on(head, ";")[0]));
  std::vector<Pair> out;
  for (size_t i = 0; i < de_senses.size(); ++i) {
    const auto de = synonyms(de_senses[i]);
    const auto en = synonyms(en_senses[i]);
    if (de.empty() || en.empty()) continue;
    ++stats->sense_pairs;
    const size_t n = de.size() == en.size() ? de.size() : 1;
    for (size_t k = 0; k < n; ++k) {
      if (sentence_like(de[k]) && sentence_like(en[k])) {
        out.push_back({en[k], de[k], doc});
        ++stats->sentence_pairs;
      }
    }
  }
  return out;
}

// ---- gettext .mo ----

std::vector<std::pair<std::string, std::string>> read_mo(std::string_view data, const std::string& what) {
  // GNU gettext's format: magic 0x950412de (in the file's byte order), revision, N, offset of
  // the msgid table, offset of the msgstr table; each table holds N (length, offset) pairs.
  if (data.size() < 20) fail("{}: not a .mo file (too short)", what);
  auto u32 = [&](size_t off, bool swap) -> uint32_t {
    if (off + 4 > data.size()) fail("{}: truncated .mo file", what);
    uint32_t v;
    std::memcpy(&v, data.data() + off, 4);
    return swap ? __builtin_bswap32(v) : v;
  };
  const uint32_t magic = u32(0, false);
  const bool swap = magic == 0xde120495u;
  if (!swap && magic != 0x950412deu) fail("{}: not a .mo file (magic {:#x})", what, magic);
  const uint32_t n = u32(8, swap), ids = u32(12, swap), strs = u32(16, swap);
  auto string_at = [&](uint32_t table, uint32_t i) {
    const uint32_t len = u32(size_t(table) + 8 * size_t(i), swap);
    const uint32_t off = u32(size_t(table) + 8 * size_t(i) + 4, swap);
    if (size_t(off) + len > data.size()) fail("{}: string {} out of bounds", what, i);
    return data.substr(off, len);
  };
  std::vector<std::pair<std::string, std::string>> out;
  for (uint32_t i = 0; i < n; ++i) {
    const std::string_view id = string_at(ids, i), str = string_at(strs, i);
    // A context is "ctx\x04id"; plural forms are NUL-separated.
    if (id.empty() || str.empty() || id.find('\x04') != std::string_view::npos ||
        id.find('\0') != std::string_view::npos) {
      continue;
    }
    out.emplace_back(id, str);
  }
  return out;
}

// ---- cleaning and splitting ----

size_t utf8_length(std::string_view text) {
  size_t n = 0;
  for (char c : text) n += (uint8_t(c) & 0xC0) != 0x80;
  return n;
}

namespace {
bool has_letter(std::string_view s) {
  for (char c : s)
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || uint8_t(c) >= 0x80) return true;
  return false;
}
}  // namespace

std::vector<Pair> clean_pairs(std::vector<Pair> pairs, CleanStats* stats) {
  stats->input += pairs.size();
  std::vector<Pair> out;
  std::unordered_set<std::string> seen;
  for (auto& p : pairs) {
    if (p.en.empty() || p.de.empty()) {
      ++stats->empty;
      continue;
    }
    const size_t en = utf8_length(p.en), de = utf8_length(p.de);
    if (std::max(en, de) > kMaxChars) {
      ++stats->too_long;
      continue;
    }
    if (double(std::max(en, de)) > kMaxLengthRatio * double(std::min(en, de))) {
      ++stats->length_ratio;
      continue;
    }
    if (p.en == p.de && has_letter(p.en)) {
      ++stats->untranslated;
      continue;
    }
    if (!seen.insert(p.en + '\t' + p.de).second) {
      ++stats->duplicate;
      continue;
    }
    out.push_back(std::move(p));
  }
  return out;
}

uint64_t fnv1a64(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : text) {
    h ^= uint8_t(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

Split split_of(std::string_view doc) {
  const uint64_t bucket = fnv1a64(doc) % 1000;
  if (bucket < kValidPerMille) return Split::Valid;
  if (bucket < kValidPerMille + kTestPerMille) return Split::Test;
  return Split::Train;
}

SplitPairs split_pairs(const std::vector<Pair>& pairs, CleanStats* stats) {
  SplitPairs candidates;
  for (const auto& p : pairs) {
    switch (split_of(p.doc)) {
      case Split::Train: candidates.train.push_back(p); break;
      case Split::Valid: candidates.valid.push_back(p); break;
      case Split::Test: candidates.test.push_back(p); break;
    }
  }
  // A side seen in a later-priority set (test, then valid) must not be trained on or validated on.
  std::unordered_set<std::string> en_held, de_held;
  auto hold = [&](const std::vector<Pair>& v) {
    for (const auto& p : v) {
      en_held.insert(p.en);
      de_held.insert(p.de);
    }
  };
  auto drop_held = [&](std::vector<Pair>& v, size_t* count) {
    const auto keep_end = std::stable_partition(
        v.begin(), v.end(), [&](const Pair& p) { return !en_held.count(p.en) && !de_held.count(p.de); });
    *count += size_t(v.end() - keep_end);
    v.erase(keep_end, v.end());
  };
  SplitPairs out;
  out.test = std::move(candidates.test);
  hold(out.test);
  out.valid = std::move(candidates.valid);
  drop_held(out.valid, &stats->valid_overlaps_test);
  hold(out.valid);
  out.train = std::move(candidates.train);
  drop_held(out.train, &stats->train_overlaps_eval);
  return out;
}

// ---- fetching and writing ----

namespace {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `relative` (e.g. "usr/share/trans/de-en") from Debian package `package`: the installed file if
// present, else a private copy unpacked from `apt-get download` (no root needed) under
// <data_dir>/.pkg/root.
fs::path package_path(const std::string& package, const std::string& relative, const std::string& data_dir) {
  const fs::path system = fs::path("/") / relative;
  if (fs::exists(system)) return system;
  const fs::path pkg_dir = fs::path(data_dir) / ".pkg";
  const fs::path local = pkg_dir / "root" / relative;
  if (fs::exists(local)) return local;

  logger().info("{} is not installed; fetching it with apt-get download into {}", package, pkg_dir.string());
  fs::create_directories(pkg_dir);
  const std::string cmd =
      fmt::format("cd {} && apt-get download {} >/dev/null && dpkg -x \"$(ls -t {}_*.deb | head -n1)\" root",
                  shell_quote(pkg_dir.string()), package, package);
  if (std::system(cmd.c_str()) != 0 || !fs::exists(local)) {
    fail(
        "could not find or download {} (from Debian package {}): run 'apt-get install {}' (or "
        "make 'apt-get download {}' work)",
        system.string(), package, package, package);
  }
  return local;
}

// The help pages present in both languages, by path relative to the language's directory.
std::vector<Pair> libreoffice_help_pairs(const std::string& data_dir) {
  const fs::path en_dir = package_path("libreoffice-help-en-us", "usr/share/libreoffice/help/en-US/text", data_dir);
  const fs::path de_dir = package_path("libreoffice-help-de", "usr/share/libreoffice/help/de/text", data_dir);
  std::vector<std::string> pages;
  for (const auto& entry : fs::recursive_directory_iterator(en_dir)) {
    if (entry.is_regular_file() && entry.path().extension() == ".html") {
      pages.push_back(fs::relative(entry.path(), en_dir).generic_string());
    }
  }
  std::sort(pages.begin(), pages.end());  // directory order is not stable
  std::vector<Pair> out;
  size_t paired_pages = 0;
  for (const auto& page : pages) {
    if (!fs::exists(de_dir / page)) continue;
    ++paired_pages;
    auto pairs = align_help_page(read_file(en_dir / page), read_file(de_dir / page), "libreoffice-help/" + page);
    std::move(pairs.begin(), pairs.end(), std::back_inserter(out));
  }
  logger().info("libreoffice-help: {} pages ({} in both languages), {} aligned paragraphs", pages.size(), paired_pages,
                out.size());
  return out;
}

std::vector<Pair> trans_de_en_pairs(const std::string& data_dir) {
  const fs::path path = package_path("trans-de-en", "usr/share/trans/de-en", data_dir);
  std::ifstream in(path);
  if (!in) fail("cannot read {}", path.string());
  TransStats stats;
  std::vector<Pair> out;
  std::string line;
  while (std::getline(in, line)) {
    auto pairs = parse_trans_line(line, &stats);
    std::move(pairs.begin(), pairs.end(), std::back_inserter(out));
  }
  logger().info(
      "trans-de-en: {} entries ({} malformed, {} with unequal sense counts), {} sense "
      "pairs, {} sentence-like",
      stats.lines, stats.malformed, stats.sense_count_mismatch, stats.sense_pairs, stats.sentence_pairs);
  return out;
}

// Message catalogs of a few packages whose German translations hold many full sentences. Each
// message is its own document (a catalog is one program's UI, too coarse to split by).
struct Catalog {
  const char* package;
  const char* mo;  // under usr/share/locale/de/LC_MESSAGES/
};
constexpr Catalog kCatalogs[] = {
    {"util-linux-locales", "util-linux.mo"},
    {"gcc-12-locales", "gcc-12.mo"},
};

std::vector<Pair> gettext_pairs(const std::string& data_dir) {
  std::vector<Pair> out;
  for (const auto& catalog : kCatalogs) {
    const fs::path path =
        package_path(catalog.package, std::string("usr/share/locale/de/LC_MESSAGES/") + catalog.mo, data_dir);
    const auto messages = read_mo(read_file(path), path.string());
    size_t kept = 0;
    for (const auto& [id, str] : messages) {
      std::string en = normalize_space(id), de = normalize_space(str);
      // printf directives and markup are not prose.
      const auto is_prose = [](const std::string& s) {
        return s.find_first_of("%<>{}\\_") == std::string::npos && sentence_like(s);
      };
      if (!is_prose(en) || !is_prose(de)) continue;
      out.push_back({en, de, fmt::format("gettext/{}/{}", catalog.mo, id)});
      ++kept;
    }
    logger().info("gettext {}: {} messages, {} sentence-like", catalog.mo, messages.size(), kept);
  }
  return out;
}

std::string source_of(const std::string& doc) { return doc.substr(0, doc.find('/')); }

// Writes every file to <path>.tmp first and renames only when all are written, so the cache
// check (all files exist) never sees a partial corpus.
void write_all_atomic(const std::vector<std::pair<std::string, std::string>>& files) {
  for (const auto& [path, text] : files) {
    std::ofstream out(path + ".tmp", std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) fail("cannot write {}.tmp", path);
  }
  for (const auto& [path, text] : files) fs::rename(path + ".tmp", path);
}

void fetch_ende(const fs::path& dir, const std::string& data_dir) {
  std::vector<Pair> pairs = libreoffice_help_pairs(data_dir);
  for (auto* source : {trans_de_en_pairs, gettext_pairs}) {
    auto more = source(data_dir);
    std::move(more.begin(), more.end(), std::back_inserter(pairs));
  }
  CleanStats stats;
  const SplitPairs split = split_pairs(clean_pairs(std::move(pairs), &stats), &stats);
  logger().info(
      "ende cleaning: {} pairs in; removed {} empty, {} longer than {} chars, {} with "
      "length ratio > {}, {} untranslated, {} duplicates, {} valid pairs sharing a side "
      "with test, {} train pairs sharing a side with valid/test",
      stats.input, stats.empty, stats.too_long, kMaxChars, stats.length_ratio, kMaxLengthRatio, stats.untranslated,
      stats.duplicate, stats.valid_overlaps_test, stats.train_overlaps_eval);

  std::vector<std::pair<std::string, std::string>> files;
  const std::pair<const char*, const std::vector<Pair>*> splits[] = {
      {"train", &split.train}, {"valid", &split.valid}, {"test", &split.test}};
  for (const auto& [name, v] : splits) {
    std::string en, de;
    std::map<std::string, std::array<size_t, 3>> by_source;  // pairs, en chars, de chars
    for (const auto& p : *v) {
      en += p.en + '\n';
      de += p.de + '\n';
      auto& s = by_source[source_of(p.doc)];
      s[0] += 1;
      s[1] += utf8_length(p.en);
      s[2] += utf8_length(p.de);
    }
    for (const auto& [source, s] : by_source) {
      logger().info("ende {} {}: {} pairs, {} en chars, {} de chars", name, source, s[0], s[1], s[2]);
    }
    files.emplace_back((dir / (std::string(name) + ".en")).string(), std::move(en));
    files.emplace_back((dir / (std::string(name) + ".de")).string(), std::move(de));
  }
  write_all_atomic(files);
}

struct Corpus {
  const char* name;
  const char* languages[2];
  void (*fetch)(const fs::path& dir, const std::string& data_dir);
};
constexpr Corpus kCorpora[] = {
    {"ende", {"en", "de"}, fetch_ende},
};

}  // namespace
}  // namespace parallel

std::vector<std::string> known_parallel_corpora() {
  std::vector<std::string> names;
  for (const auto& c : parallel::kCorpora) names.emplace_back(c.name);
  return names;
}

std::pair<std::string, std::string> parallel_corpus_languages(const std::string& name) {
  for (const auto& c : parallel::kCorpora)
    if (name == c.name) return {c.languages[0], c.languages[1]};
  fail("unknown parallel corpus '{}' (known: {})", name, fmt::join(known_parallel_corpora(), ", "));
}

ParallelFiles fetch_parallel_corpus(const std::string& name, const std::string& data_dir, const std::string& src_lang,
                                    const std::string& tgt_lang) {
  for (const auto& corpus : parallel::kCorpora) {
    if (name != corpus.name) continue;
    const std::string a = corpus.languages[0], b = corpus.languages[1];
    if (!((src_lang == a && tgt_lang == b) || (src_lang == b && tgt_lang == a))) {
      fail("parallel corpus '{}' has languages {} and {}, not {} -> {}", name, a, b, src_lang, tgt_lang);
    }
    const fs::path dir = fs::path(data_dir) / name;
    auto file = [&](const char* split, const std::string& lang) {
      return (dir / fmt::format("{}.{}", split, lang)).string();
    };
    ParallelFiles files{dir.string() + "/",      file("train", src_lang), file("train", tgt_lang),
                        file("valid", src_lang), file("valid", tgt_lang), file("test", src_lang),
                        file("test", tgt_lang)};
    bool cached = true;
    for (const auto* p :
         {&files.train_src, &files.train_tgt, &files.valid_src, &files.valid_tgt, &files.test_src, &files.test_tgt}) {
      cached = cached && fs::exists(*p);
    }
    if (!cached) {
      fs::create_directories(dir);
      corpus.fetch(dir, data_dir);
    }
    return files;
  }
  fail("unknown parallel corpus '{}' (known: {})", name, fmt::join(known_parallel_corpora(), ", "));
}

}  // namespace loom
