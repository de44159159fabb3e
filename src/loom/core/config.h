// Typed configuration: each struct declares its fields once, in a `visit` method, and the
// visitors below parse them from YAML, write them back, and list them. Unknown keys and
// ill-typed values are errors that name the key and the file (STYLE.md guideline 8).
//
//   struct Foo {
//     int width = 64;
//     template <class V> void visit(V& v) { v("width", width, "width of the thing"); }
//     void validate() const;
//   };
// A field may carry tags after its documentation (v("width", width, "doc", tag)): declarations for
// the visitors that look for them (ModelConfig's fast-engine support, nn/config.h); every other
// visitor ignores them.
#pragma once
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "loom/core/error.h"

namespace loom {

template <class T>
struct IsVector : std::false_type {};
template <class T>
struct IsVector<std::vector<T>> : std::true_type {};

// Reads fields from a YAML map; remembers which keys it used so unknown ones can be reported.
class YamlReader {
 public:
  YamlReader(YAML::Node node, std::string source, std::string prefix = "")
      : node_(std::move(node)), source_(std::move(source)), prefix_(std::move(prefix)) {
    if (node_ && !node_.IsNull() && !node_.IsMap())
      fail("{}: '{}' must be a map of keys to values", source_, prefix_.empty() ? "recipe" : prefix_);
  }

  template <class T, class... Tags>
  void operator()(const char* key, T& value, const char* /*doc*/, const Tags&...) {
    used_.insert(key);
    if (!node_ || node_.IsNull()) return;
    const YAML::Node child = node_[key];
    if (!child) return;
    read(child, prefix_ + key, value);
  }

  template <class T>
  void section(const char* key, T& value, const char* /*doc*/) {
    used_.insert(key);
    YAML::Node child = (node_ && !node_.IsNull()) ? node_[key] : YAML::Node();
    YamlReader sub(child, source_, prefix_ + key + ".");
    value.visit(sub);
    sub.check_unknown();
  }

  // Fails on the first key the visited struct did not declare, or that appears twice (yaml-cpp
  // would silently keep the first value).
  void check_unknown() const {
    if (!node_ || node_.IsNull()) return;
    std::set<std::string> seen;
    for (const auto& kv : node_) {
      const std::string key = kv.first.as<std::string>();
      if (!seen.insert(key).second) fail("{}: key '{}{}' appears twice", source_, prefix_, key);
      if (!used_.count(key)) {
        std::string known;
        for (const auto& k : used_) known += (known.empty() ? "" : ", ") + k;
        fail("{}: unknown key '{}{}' (known keys here: {})", source_, prefix_, key, known);
      }
    }
  }

 private:
  template <class T>
  void read(const YAML::Node& node, const std::string& name, T& value) {
    try {
      if constexpr (IsVector<T>::value) {
        if (!node.IsSequence()) fail("{}: '{}' must be a list", source_, name);
        value = node.as<T>();
      } else {
        if (!node.IsScalar()) fail("{}: '{}' must be a single value", source_, name);
        value = node.as<T>();
      }
    } catch (const YAML::Exception&) {
      fail("{}: '{}' has a bad value '{}' (expected {})", source_, name, dump(node), type_name<T>());
    }
  }

  static std::string dump(const YAML::Node& node) {
    YAML::Emitter out;
    out << YAML::Flow << node;
    return out.c_str();
  }

  template <class T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else if constexpr (std::is_same_v<T, std::string>) return "a string";
    else if constexpr (std::is_same_v<T, std::vector<std::string>>) return "a list of strings";
    else return "a list of integers";
  }

  YAML::Node node_;
  std::string source_;
  std::string prefix_;
  std::set<std::string> used_;
};

// Writes fields as a YAML map, with each field's documentation as a comment.
class YamlWriter {
 public:
  explicit YamlWriter(YAML::Emitter& out) : out_(out) {}

  template <class T, class... Tags>
  void operator()(const char* key, const T& value, const char* doc, const Tags&...) {
    out_ << YAML::Key << key << YAML::Value;
    if constexpr (IsVector<T>::value) out_ << YAML::Flow;
    // Shortest text that reads back to the same double ("0.1", not "0.10000000000000001").
    if constexpr (std::is_floating_point_v<T>) out_ << fmt::format("{}", value);
    else out_ << value;
    out_ << YAML::Comment(doc);
  }

  template <class T>
  void section(const char* key, T& value, const char* doc) {
    out_ << YAML::Key << key << YAML::Comment(doc) << YAML::Value << YAML::BeginMap;
    value.visit(*this);
    out_ << YAML::EndMap;
  }

 private:
  YAML::Emitter& out_;
};

// Collects "section.key" names, used to document and to check --set keys.
class KeyLister {
 public:
  template <class T, class... Tags>
  void operator()(const char* key, const T&, const char* doc, const Tags&...) {
    keys.push_back({prefix_ + key, doc});
  }
  template <class T>
  void section(const char* key, T& value, const char*) {
    const std::string saved = prefix_;
    prefix_ += std::string(key) + ".";
    value.visit(*this);
    prefix_ = saved;
  }
  std::vector<std::pair<std::string, std::string>> keys;

 private:
  std::string prefix_;
};

// Applies "a.b.c=value" overrides to a YAML tree; the value is parsed as YAML ("[a, b]" is a
// list). Whether the key exists is checked when the tree is parsed into the typed config.
void apply_override(YAML::Node& root, const std::string& assignment);

// A config file's YAML text as a map (empty text: an empty map) with the overrides applied; text
// that is not YAML, or not a map, is one loom::Error naming `source` (`shape` says what the map
// should hold, e.g. "sections (model:, train:, ...)").
YAML::Node parse_yaml_map(const std::string& yaml, const std::string& source, const std::string& shape,
                          const std::vector<std::string>& overrides);

template <class Config>
Config parse_config(const YAML::Node& root, const std::string& source) {
  Config config;
  YamlReader reader(root, source);
  config.visit(reader);
  reader.check_unknown();
  config.validate(source);
  return config;
}

template <class Config>
std::string config_to_yaml(Config config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  YamlWriter writer(out);
  config.visit(writer);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace loom
