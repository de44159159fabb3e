// One registry from block name to implementation. Each block family (mixer, position, norm,
// ffn) has a Registry of its own factory type; every entry also carries the documentation that
// `loom blocks` prints and docs/blocks.md mirrors. Registration is explicit, from
// register_builtin_blocks(), because static initializers in a static library can be dropped by
// the linker.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "loom/core/error.h"

namespace loom {

struct BlockInfo {
  std::string family;       // "mixer", "position", "norm", "ffn"
  std::string name;         // the name recipes use
  std::string description;  // one line
  std::string paper;        // the paper it comes from
};

// Every registered block of every family, in registration order (for `loom blocks`).
std::vector<BlockInfo>& block_catalogue();

template <class Factory>
class Registry {
 public:
  explicit Registry(std::string family) : family_(std::move(family)) {}

  void add(BlockInfo info, Factory factory) {
    info.family = family_;
    if (entries_.count(info.name)) fail("{} block '{}' registered twice", family_, info.name);
    block_catalogue().push_back(info);
    const std::string name = info.name;
    entries_.emplace(name, Entry{std::move(info), std::move(factory)});
  }

  bool contains(const std::string& name) const { return entries_.count(name) > 0; }

  // `where` says who asked, e.g. "layer 3": the error names it and lists the valid names.
  const Factory& get(const std::string& name, const std::string& where) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
      fail("{}: unknown {} block '{}' (valid: {})", where, family_, name, names_joined());
    return it->second.factory;
  }

  std::string names_joined() const {
    std::string out;
    for (const auto& [name, entry] : entries_) out += (out.empty() ? "" : ", ") + name;
    return out;
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, entry] : entries_) out.push_back(name);
    return out;
  }

 private:
  struct Entry {
    BlockInfo info;
    Factory factory;
  };
  std::string family_;
  std::map<std::string, Entry> entries_;
};

}  // namespace loom
