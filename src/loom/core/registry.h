// One registry from block name to implementation. Each block family (mixer, position, norm,
// ffn) has a Registry of its own factory type; every entry also carries the documentation that
// `loom blocks` prints and docs/blocks.md mirrors, and what the block declares about itself
// (traits, fast-engine support, options). Registration is explicit, from blocks() (nn/blocks.cpp),
// because static initializers in a static library can be dropped by the linker.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "loom/core/config.h"
#include "loom/core/error.h"

namespace loom {

// What a registered block is and what it declares about itself. Written where the block is
// registered, with the fluent setters:
//   r.add(BlockInfo("rmsnorm", "RMSNorm: ...", "Zhang & Sennrich 2019, ...").fast_engine(true), factory);
struct BlockInfo {
  BlockInfo(std::string name, std::string description, std::string paper)
      : name(std::move(name)), description(std::move(description)), paper(std::move(paper)) {}

  std::string family;       // "mixer", "position", "norm", "ffn" (set by the registry)
  std::string name;         // the name recipes use
  std::string description;  // one line
  std::string paper;        // the paper it comes from
  // What the block offers or needs, checked when a recipe is loaded (nn/config.cpp):
  //   mixers:    "causal" / "bidirectional" (the forms it has: decoders need the first, encoders
  //              the second), "qk" (it calls the position scheme's rotate on queries and keys),
  //              "scores" (it adds the scheme's attention_bias to softmax scores)
  //   positions: "qk" or "scores" (acts only through that mixer hook; else on the embeddings)
  std::vector<std::string> traits;
  // Whether the fast inference engine (infer/fast_engine.h) implements the block: every block
  // states it, yes or no (Registry::add refuses one that does not). The engine runs a model only
  // if every block it uses says yes; tests/test_fast_engine.cpp sweeps every block that does.
  std::optional<bool> runs_on_fast_engine;
  // The recipe keys of the block's own options struct (model.window, model.n_experts, ...).
  std::vector<std::string> options;

  BlockInfo& with_traits(std::vector<std::string> t) {
    traits = std::move(t);
    return *this;
  }
  BlockInfo& fast_engine(bool runs) {
    runs_on_fast_engine = runs;
    return *this;
  }
  // Options: a config struct with a visit() (core/config.h) holding the block's own recipe keys.
  template <class Options>
  BlockInfo& with_options() {
    KeyLister lister;
    Options().visit(lister);
    for (const auto& key : lister.keys) options.push_back(key.first);
    return *this;
  }

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
    if (!info.runs_on_fast_engine)
      fail(
          "{} block '{}' does not say whether the fast engine runs it: register it with "
          "BlockInfo(...).fast_engine(true or false)",
          family_, info.name);
    block_catalogue().push_back(info);
    const std::string name = info.name;
    entries_.emplace(name, Entry{std::move(info), std::move(factory)});
  }

  bool contains(const std::string& name) const { return entries_.count(name) > 0; }

  // `where` says who asked, e.g. "layer 3": the error names it and lists the valid names.
  const Factory& get(const std::string& name, const std::string& where) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail("{}: unknown {} block '{}' (valid: {})", where, family_, name, names_joined());
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
