// R XDR unserialize (subset) and lazy-load DB reader; see rdata.h. Layout per R Internals,
// "Serialization formats": an item is a 32-bit big-endian flags word (bits 0-7 SEXPTYPE, bit 9
// has-attributes, bit 10 has-tag, bits 12-27 "levels", which for CHARSXP hold the encoding),
// then a type-specific body, then the attribute pairlist when bit 9 is set.
#include "loom/data/rdata.h"

#include <zlib.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "loom/core/error.h"

namespace loom::rdata {
namespace {

constexpr int kRefSxp = 255;       // back-reference into the table of symbols read so far
constexpr int kNilValueSxp = 254;  // R_NilValue
constexpr int kLatin1Mask = 1 << 2;

std::string latin1_to_utf8(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

class Reader {
 public:
  Reader(std::string_view bytes, const std::string& what) : bytes_(bytes), what_(what) {}

  RPtr read_all() {
    if (bytes_.size() < 2 || bytes_.substr(0, 2) != "X\n") {
      fail(
          "{}: not an R XDR serialization (expected header \"X\\n\"; ASCII/native formats and "
          "still-compressed data are not supported)",
          what_);
    }
    pos_ = 2;
    const int32_t version = read_int();
    read_int();  // version of R that wrote it
    read_int();  // minimal R version to read it
    if (version == 3) {
      const int32_t n = read_int();
      read_bytes(n);  // native encoding name, e.g. "UTF-8"
    } else if (version != 2) {
      fail("{}: unsupported R serialization version {} (expected 2 or 3)", what_, version);
    }
    RPtr out = read_item();
    if (pos_ != bytes_.size()) {
      fail("{}: {} trailing bytes after the R object", what_, bytes_.size() - pos_);
    }
    return out;
  }

 private:
  int32_t read_int() {
    need(4);
    const auto* p = reinterpret_cast<const unsigned char*>(bytes_.data() + pos_);
    pos_ += 4;
    return static_cast<int32_t>((uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) |
                                uint32_t{p[3]});
  }

  std::string read_bytes(int64_t n) {
    if (n < 0) fail("{}: negative string length {} at byte {}", what_, n, pos_);
    need(static_cast<size_t>(n));
    std::string s(bytes_.substr(pos_, static_cast<size_t>(n)));
    pos_ += static_cast<size_t>(n);
    return s;
  }

  // Vector length: -1 announces a 64-bit "long length" in the next two words.
  int64_t read_length(size_t min_bytes_per_element) {
    int64_t n = read_int();
    if (n == -1) {
      const int64_t upper = static_cast<uint32_t>(read_int());
      const int64_t lower = static_cast<uint32_t>(read_int());
      n = (upper << 32) + lower;
    }
    if (n < 0 || static_cast<uint64_t>(n) * min_bytes_per_element > bytes_.size() - pos_) {
      fail("{}: vector length {} at byte {} exceeds the data", what_, n, pos_);
    }
    return n;
  }

  void need(size_t n) const {
    if (bytes_.size() - pos_ < n) fail("{}: truncated R serialization at byte {}", what_, pos_);
  }

  RPtr read_item() { return read_item(read_int()); }

  RPtr read_item(int32_t flags) {
    const int type = flags & 0xFF;
    const bool has_attr = flags & (1 << 9);
    const bool has_tag = flags & (1 << 10);
    const int levels = flags >> 12;
    if (type == kNilValueSxp) return std::make_shared<RObject>();
    if (type == kRefSxp) {
      int64_t index = static_cast<uint32_t>(flags) >> 8;
      if (index == 0) index = read_int();
      if (index < 1 || index > static_cast<int64_t>(refs_.size())) {
        fail("{}: bad back-reference {} at byte {}", what_, index, pos_);
      }
      return refs_[index - 1];
    }
    auto obj = std::make_shared<RObject>();
    obj->type = static_cast<RType>(type);
    switch (type) {
      case static_cast<int>(RType::Symbol): {
        RPtr name = read_item();
        if (name->type != RType::Char || !name->chars) fail("{}: symbol without a name", what_);
        obj->chars = name->chars;
        refs_.push_back(obj);
        return obj;
      }
      case static_cast<int>(RType::Pairlist): read_pairlist(flags, *obj); return obj;
      case static_cast<int>(RType::Char): {
        const int32_t n = read_int();
        if (n != -1) {
          obj->chars = read_bytes(n);
          if (levels & kLatin1Mask) obj->chars = latin1_to_utf8(*obj->chars);
        }
        break;
      }
      case static_cast<int>(RType::Logical):
      case static_cast<int>(RType::Integer): {
        obj->ints.resize(read_length(4));
        for (auto& v : obj->ints) v = read_int();
        break;
      }
      case static_cast<int>(RType::String): {
        obj->strings.resize(read_length(8));
        for (auto& s : obj->strings) {
          RPtr c = read_item();
          if (c->type != RType::Char) fail("{}: string vector element is not a CHARSXP", what_);
          s = c->chars;
        }
        break;
      }
      case static_cast<int>(RType::List): {
        obj->items.resize(read_length(4));
        for (auto& item : obj->items) item = read_item();
        break;
      }
      default:
        fail(
            "{}: unsupported R object type {} at byte {} (this reader handles character, "
            "integer, logical, list and pairlist data only)",
            what_, type, pos_ - 4);
    }
    if (has_attr) obj->attributes = as_attributes(read_item());
    if (has_tag) fail("{}: unexpected tag on R object type {}", what_, type);
    return obj;
  }

  // A pairlist is written cell by cell: [attributes] [tag] CAR, then the CDR's flags, until
  // NILVALUE_SXP. It is flattened into `items` and `tags`.
  void read_pairlist(int32_t flags, RObject& out) {
    for (;;) {
      if (flags & (1 << 9)) {
        auto attrs = as_attributes(read_item());
        if (out.items.empty()) out.attributes = std::move(attrs);
      }
      std::string tag;
      if (flags & (1 << 10)) {
        RPtr t = read_item();
        if (t->type != RType::Symbol) fail("{}: pairlist tag is not a symbol", what_);
        tag = *t->chars;
      }
      out.tags.push_back(tag);
      out.items.push_back(read_item());
      flags = read_int();
      if ((flags & 0xFF) == kNilValueSxp) return;
      if ((flags & 0xFF) != static_cast<int>(RType::Pairlist)) {
        fail("{}: dotted pairlist (CDR of type {}) is not supported", what_, flags & 0xFF);
      }
    }
  }

  std::vector<std::pair<std::string, RPtr>> as_attributes(const RPtr& list) {
    if (list->type != RType::Pairlist) fail("{}: attributes are not a pairlist", what_);
    std::vector<std::pair<std::string, RPtr>> out;
    for (size_t i = 0; i < list->items.size(); ++i) out.emplace_back(list->tags[i], list->items[i]);
    return out;
  }

  std::string_view bytes_;
  std::string what_;
  size_t pos_ = 0;
  std::vector<RPtr> refs_;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// R's lazy-load compression type 1: 4-byte big-endian uncompressed length, then a zlib stream.
std::string inflate_prefixed(std::string_view data, const std::string& what) {
  if (data.size() < 4) fail("{}: truncated compressed block", what);
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const uint32_t expected = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
  std::string out = inflate(data.substr(4), what);
  if (out.size() != expected) {
    fail("{}: inflated to {} bytes, header says {}", what, out.size(), expected);
  }
  return out;
}

}  // namespace

const RObject* RObject::attribute(std::string_view name) const {
  for (const auto& [key, value] : attributes) {
    if (key == name) return value.get();
  }
  return nullptr;
}

std::vector<std::string> RObject::names() const {
  std::vector<std::string> out;
  if (const RObject* n = attribute("names")) {
    for (const auto& s : n->strings) out.push_back(s.value_or("NA"));
  }
  return out;
}

RPtr unserialize(std::string_view bytes, const std::string& what) { return Reader(bytes, what).read_all(); }

std::string inflate(std::string_view compressed, const std::string& what) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) fail("{}: zlib init failed", what);  // +32: zlib or gzip
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  zs.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  char buffer[1 << 16];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buffer);
    zs.avail_out = sizeof(buffer);
    rc = ::inflate(&zs, Z_NO_FLUSH);
    out.append(buffer, sizeof(buffer) - zs.avail_out);
  }
  inflateEnd(&zs);
  if (rc != Z_STREAM_END) fail("{}: corrupt or truncated zlib/gzip data (zlib code {})", what, rc);
  return out;
}

std::map<std::string, RPtr> read_lazyload_db(const std::string& prefix) {
  const std::string rdx_path = prefix + ".rdx", rdb_path = prefix + ".rdb";
  // The index is written whole-file gzip by current R, and as a length-prefixed zlib block by
  // older versions; accept both.
  const std::string rdx = read_file(rdx_path);
  const bool gzip =
      rdx.size() >= 2 && static_cast<unsigned char>(rdx[0]) == 0x1F && static_cast<unsigned char>(rdx[1]) == 0x8B;
  RPtr index = unserialize(gzip ? inflate(rdx, rdx_path) : inflate_prefixed(rdx, rdx_path), rdx_path);

  const RObject *variables = nullptr, *compressed = nullptr;
  const auto keys = index->names();
  for (size_t i = 0; i < keys.size() && i < index->items.size(); ++i) {
    if (keys[i] == "variables") variables = index->items[i].get();
    if (keys[i] == "compressed") compressed = index->items[i].get();
  }
  if (index->type != RType::List || !variables || variables->type != RType::List) {
    fail("{}: not a lazy-load index (no 'variables' list)", rdx_path);
  }
  if (compressed && (compressed->ints.size() != 1 || compressed->ints[0] != 1)) {
    fail("{}: only zlib-compressed lazy-load DBs are supported (bzip2/xz are not)", rdx_path);
  }

  const std::string rdb = read_file(rdb_path);
  std::map<std::string, RPtr> out;
  const auto names = variables->names();
  for (size_t i = 0; i < names.size() && i < variables->items.size(); ++i) {
    const RObject& pos = *variables->items[i];
    if (pos.type != RType::Integer || pos.ints.size() != 2) {
      fail("{}: entry '{}' is not an (offset, length) pair", rdx_path, names[i]);
    }
    const int64_t offset = pos.ints[0], length = pos.ints[1];
    if (offset < 0 || length < 0 || offset + length > static_cast<int64_t>(rdb.size())) {
      fail("{}: entry '{}' lies outside the file", rdb_path, names[i]);
    }
    const std::string what = rdb_path + ":" + names[i];
    const auto block = std::string_view(rdb).substr(offset, length);
    out[names[i]] = unserialize(inflate_prefixed(block, what), what);
  }
  return out;
}

}  // namespace loom::rdata
