// A strict reader for the small subset of R's serialization format (XDR, versions 2 and 3) and of
// R's lazy-load databases (Rdata.rdx + Rdata.rdb) that loom needs to read corpora shipped as R
// data packages (e.g. Debian's r-cran-janeaustenr) without R. Reference: R Internals, section
// "Serialization formats", and src/main/serialize.c. Anything outside the subset is an error.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loom::rdata {

// SEXPTYPE codes (R's Rinternals.h) of the types this reader accepts.
enum class RType : int {
  Nil = 0,
  Symbol = 1,
  Pairlist = 2,
  Char = 9,
  Logical = 10,
  Integer = 13,
  String = 16,
  List = 19
};

struct RObject;
using RPtr = std::shared_ptr<const RObject>;

// One unserialized R object; which fields are used depends on `type`.
struct RObject {
  RType type = RType::Nil;
  std::optional<std::string> chars;                 // Char (nullopt = NA_character_), Symbol name
  std::vector<std::optional<std::string>> strings;  // String (nullopt = NA)
  std::vector<int32_t> ints;                        // Integer, Logical (NA = INT32_MIN)
  std::vector<RPtr> items;                          // List elements, Pairlist values
  std::vector<std::string> tags;                    // Pairlist tags ("" where untagged)
  std::vector<std::pair<std::string, RPtr>> attributes;

  const RObject* attribute(std::string_view name) const;  // nullptr when absent
  std::vector<std::string> names() const;                 // the "names" attribute, or empty
};

// Unserializes one object from XDR bytes ("X\n" header). `what` names the source in errors.
RPtr unserialize(std::string_view bytes, const std::string& what);

// Inflates a zlib or gzip stream (detected from its header). `what` names the source in errors.
std::string inflate(std::string_view compressed, const std::string& what);

// Reads every object of a lazy-load database given its path without extension
// (".../data/Rdata" for Rdata.rdx + Rdata.rdb). Only zlib-compressed databases are supported.
std::map<std::string, RPtr> read_lazyload_db(const std::string& prefix);

}  // namespace loom::rdata
