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
  // What the block offers or needs, checked when a recipe is loaded (nn/config.cpp):
  //   mixers:    "causal" / "bidirectional" (the forms it has: decoders need the first, encoders
  //              the second), "qk" (it calls the position scheme's rotate on queries and keys),
  //              "scores" (it adds the scheme's attention_bias to softmax scores)
  //   positions: "qk" or "scores" (acts only through that mixer hook; else on the embeddings)
  std::vector<std::string> traits = {};

  bool has(const std::string& trait) const {
    for (const auto& t : traits)
      if (t == trait) return true;
    return false;
  }
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

  const BlockInfo& info(const std::string& name, const std::string& where) const {
    get(name, where);
    return entries_.at(name).info;
  }

  std::string names_joined() const {
    std::string out;
    for (const auto& [name, entry] : entries_) out += (out.empty() ? "" : ", ") + name;
    return out;
  }

  // Every name, or those whose block has `trait`.
  std::vector<std::string> names(const std::string& trait = "") const {
    std::vector<std::string> out;
    for (const auto& [name, entry] : entries_)
      if (trait.empty() || entry.info.has(trait)) out.push_back(name);
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
