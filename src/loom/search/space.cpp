#include "loom/search/space.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "loom/core/error.h"
#include "loom/nn/blocks.h"

namespace loom {
namespace fs = std::filesystem;
namespace {

template <class T>
const T& pick(const std::vector<T>& choices, std::mt19937_64& rng) {
  return choices[std::uniform_int_distribution<size_t>(0, choices.size() - 1)(rng)];
}

bool chance(double p, std::mt19937_64& rng) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

template <class T>
bool has(const std::vector<T>& choices, const T& value) {
  return std::find(choices.begin(), choices.end(), value) != choices.end();
}

}  // namespace

std::string format_arch(const Arch& arch) {
  std::string out = std::to_string(arch.d_model);
  for (int64_t i = 0; i < arch.n_layers(); ++i)
    out += fmt::format(",{}:{}:{}", arch.mixers[i], arch.heads[i], arch.d_ff[i]);
  return out;
}

Arch parse_arch(const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& why) -> Arch {
    fail(
        "{}: '{}' is not an architecture ({}); the form is D_MODEL,MIXER:HEADS:D_FF,... with one MIXER:HEADS:D_FF "
        "per layer, e.g. 256,attention:4:688,attention:2:512",
        where, text, why);
  };
  auto number = [&](const std::string& s) -> int64_t {
    if (s.empty() || s.size() > 12 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
      bad(fmt::format("'{}' is not a positive integer", s));
    const int64_t v = std::stoll(s);
    if (v <= 0) bad(fmt::format("'{}' is not a positive integer", s));
    return v;
  };
  std::vector<std::string> items;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) items.push_back(item);
  if (items.size() < 2) return bad("no layers");
  Arch arch;
  arch.d_model = number(items[0]);
  for (size_t i = 1; i < items.size(); ++i) {
    const auto a = items[i].find(':'), b = items[i].rfind(':');
    if (a == std::string::npos || a == b)
      return bad(fmt::format("layer {} '{}' is not MIXER:HEADS:D_FF", i - 1, items[i]));
    arch.mixers.push_back(items[i].substr(0, a));
    if (arch.mixers.back().empty()) return bad(fmt::format("layer {} has no mixer", i - 1));
    arch.heads.push_back(number(items[i].substr(a + 1, b - a - 1)));
    arch.d_ff.push_back(number(items[i].substr(b + 1)));
  }
  return arch;
}

SearchSpace::SearchSpace(SearchConfig config, Recipe base, std::string source)
    : config_(std::move(config)), choices_(config_.space), base_(std::move(base)), source_(std::move(source)) {
  const ModelConfig& m = base_.model;
  if (config_.format != 1) fail("{}: format must be 1, got {}", source_, config_.format);
  const auto& sn = config_.supernet;
  if (sn.sampling != "random" && sn.sampling != "sandwich")
    fail("{}: supernet.sampling must be random or sandwich, got '{}'", source_, sn.sampling);
  if (sn.steps < 0) fail("{}: supernet.steps must be >= 0, got {}", source_, sn.steps);
  const auto& lat = config_.latency;
  if (lat.weights != "f32" && lat.weights != "int8" && lat.weights != "q4_0")
    fail("{}: latency.weights must be f32, int8 or q4_0, got '{}'", source_, lat.weights);
  const auto& ev = config_.evolve;
  for (const auto& [key, value, least] : {std::tuple<const char*, int64_t, int64_t>{"latency.prompt", lat.prompt, 1},
                                          {"latency.decode", lat.decode, 1},
                                          {"latency.repeats", lat.repeats, 1},
                                          {"latency.samples", lat.samples, 2},
                                          {"latency.threads", lat.threads, 0},
                                          {"evolve.population", ev.population, 2},
                                          {"evolve.parents", ev.parents, 1},
                                          {"evolve.mutations", ev.mutations, 0},
                                          {"evolve.crossovers", ev.crossovers, 0},
                                          {"evolve.iterations", ev.iterations, 1},
                                          {"evolve.eval_batches", ev.eval_batches, 1},
                                          {"proxies.steps", config_.proxies.steps, 1},
                                          {"proxies.batches", config_.proxies.batches, 1}})
    if (value < least) fail("{}: {} must be at least {}, got {}", source_, key, least, value);
  if (ev.parents > ev.population)
    fail("{}: evolve.parents ({}) must not exceed evolve.population ({})", source_, ev.parents, ev.population);
  if (ev.parents + ev.mutations + ev.crossovers > ev.population)
    fail("{}: evolve.parents + mutations + crossovers ({}) must not exceed evolve.population ({})", source_,
         ev.parents + ev.mutations + ev.crossovers, ev.population);
  if (ev.mutation_prob < 0 || ev.mutation_prob > 1)
    fail("{}: evolve.mutation_prob must be in [0, 1], got {}", source_, ev.mutation_prob);
  if (ev.latency_limit_ms < 0) fail("{}: evolve.latency_limit_ms must be >= 0, got {}", source_, ev.latency_limit_ms);
  if (m.arch != "decoder")
    fail("{}: space: the base recipe's model.arch is {}; architecture search covers decoders", source_, m.arch);
  if (m.per_layer_widths())
    fail("{}: space: the base recipe sets model.layer_d_ff / model.layer_heads; the space chooses them", source_);
  auto defaulted = [](std::vector<int64_t>& list, int64_t value) {
    if (list.empty()) list.push_back(value);
  };
  defaulted(choices_.d_model, m.d_model);
  defaulted(choices_.n_layers, m.n_layers);
  defaulted(choices_.d_ff, m.d_ff);
  defaulted(choices_.n_heads, m.n_heads);
  if (choices_.mixer.empty()) {
    const auto base_mixers = m.layer_mixers();
    for (const auto& name : base_mixers)
      if (!has(choices_.mixer, name)) choices_.mixer.push_back(name);
  }
  for (const auto& [key, list] : {std::pair<const char*, std::vector<int64_t>*>{"d_model", &choices_.d_model},
                                  {"n_layers", &choices_.n_layers},
                                  {"d_ff", &choices_.d_ff},
                                  {"n_heads", &choices_.n_heads}}) {
    for (int64_t v : *list)
      if (v <= 0) fail("{}: space.{}: every choice must be positive, got {}", source_, key, v);
    std::sort(list->begin(), list->end());
    if (std::adjacent_find(list->begin(), list->end()) != list->end())
      fail("{}: space.{}: a choice is listed twice ({})", source_, key, fmt::join(*list, ", "));
  }
  for (int64_t h : choices_.n_heads)
    if (m.n_kv_heads > 0 && h % m.n_kv_heads != 0)
      fail("{}: space.n_heads: {} heads do not divide into the base recipe's model.n_kv_heads {} key/value heads",
           source_, h, m.n_kv_heads);
  if (choices_.head_dim < 0) fail("{}: space.head_dim must be >= 0, got {}", source_, choices_.head_dim);
  if (choices_.head_dim == 0) {
    const int64_t d = choices_.d_model.back(), h = choices_.n_heads.back();
    if (d % h != 0)
      fail("{}: space.head_dim: the largest d_model {} is not divisible by the largest n_heads {}; set space.head_dim",
           source_, d, h);
    choices_.head_dim = d / h;
  }
  const auto& mixers = blocks().mixers;
  for (size_t i = 0; i < choices_.mixer.size(); ++i) {
    const auto& name = choices_.mixer[i];
    if (std::count(choices_.mixer.begin(), choices_.mixer.end(), name) > 1)
      fail("{}: space.mixer: '{}' is listed twice", source_, name);
    mixers.get(name, fmt::format("{}: space.mixer", source_));  // unknown names: the registry's error
  }
  // Every mixer, at every width: the model each builds must validate (the mixer's causal form,
  // its pairing with the base's position scheme, RoPE's even head_dim, the mixer's own options).
  for (const auto& name : choices_.mixer)
    for (int64_t d : {choices_.d_model.front(), choices_.d_model.back()}) {
      Arch probe = largest(name);
      probe.d_model = d;
      const ModelConfig c = model_config(probe);
      try {
        c.validate(fmt::format("{}: space.mixer {} at d_model {}", source_, name, d));
      } catch (const Error& e) {
        fail("{}", e.what());
      }
    }
}

Arch SearchSpace::largest(const std::string& mixer) const {
  const int64_t layers = choices_.n_layers.back();
  Arch a;
  a.d_model = choices_.d_model.back();
  a.mixers.assign(layers, mixer.empty() ? choices_.mixer.front() : mixer);
  a.heads.assign(layers, choices_.n_heads.back());
  a.d_ff.assign(layers, choices_.d_ff.back());
  return a;
}

Arch SearchSpace::smallest() const {
  const int64_t layers = choices_.n_layers.front();
  Arch a;
  a.d_model = choices_.d_model.front();
  a.mixers.assign(layers, choices_.mixer.front());
  a.heads.assign(layers, choices_.n_heads.front());
  a.d_ff.assign(layers, choices_.d_ff.front());
  return a;
}

Arch SearchSpace::sample(std::mt19937_64& rng) const {
  Arch a;
  a.d_model = pick(choices_.d_model, rng);
  const int64_t layers = pick(choices_.n_layers, rng);
  for (int64_t i = 0; i < layers; ++i) {
    a.mixers.push_back(pick(choices_.mixer, rng));
    a.heads.push_back(pick(choices_.n_heads, rng));
    a.d_ff.push_back(pick(choices_.d_ff, rng));
  }
  return a;
}

Arch SearchSpace::mutate(const Arch& arch, double p, std::mt19937_64& rng) const {
  Arch a = arch;
  if (chance(p, rng)) a.d_model = pick(choices_.d_model, rng);
  const int64_t layers = chance(p, rng) ? pick(choices_.n_layers, rng) : a.n_layers();
  a.mixers.resize(layers), a.heads.resize(layers), a.d_ff.resize(layers);
  for (int64_t i = 0; i < layers; ++i) {
    const bool added = i >= arch.n_layers();
    if (added || chance(p, rng)) a.mixers[i] = pick(choices_.mixer, rng);
    if (added || chance(p, rng)) a.heads[i] = pick(choices_.n_heads, rng);
    if (added || chance(p, rng)) a.d_ff[i] = pick(choices_.d_ff, rng);
  }
  return a;
}

Arch SearchSpace::crossover(const Arch& a, const Arch& b, std::mt19937_64& rng) const {
  Arch child;
  child.d_model = chance(0.5, rng) ? a.d_model : b.d_model;
  const int64_t layers = chance(0.5, rng) ? a.n_layers() : b.n_layers();
  for (int64_t i = 0; i < layers; ++i) {
    const bool in_a = i < a.n_layers(), in_b = i < b.n_layers();
    const Arch& from = in_a && in_b ? (chance(0.5, rng) ? a : b) : (in_a ? a : b);
    child.mixers.push_back(from.mixers[i]);
    child.heads.push_back(from.heads[i]);
    child.d_ff.push_back(from.d_ff[i]);
  }
  return child;
}

bool SearchSpace::contains(const Arch& arch, std::string* why) const {
  auto no = [&](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  if (!has(choices_.d_model, arch.d_model))
    return no(fmt::format("d_model {} is not a choice ({})", arch.d_model, fmt::join(choices_.d_model, ", ")));
  if (!has(choices_.n_layers, arch.n_layers()))
    return no(fmt::format("{} layers is not a choice ({})", arch.n_layers(), fmt::join(choices_.n_layers, ", ")));
  if (arch.heads.size() != arch.mixers.size() || arch.d_ff.size() != arch.mixers.size())
    return no("the per-layer lists differ in length");
  for (int64_t i = 0; i < arch.n_layers(); ++i) {
    if (!has(choices_.mixer, arch.mixers[i]))
      return no(
          fmt::format("layer {}: mixer '{}' is not a choice ({})", i, arch.mixers[i], fmt::join(choices_.mixer, ", ")));
    if (!has(choices_.n_heads, arch.heads[i]))
      return no(
          fmt::format("layer {}: {} heads is not a choice ({})", i, arch.heads[i], fmt::join(choices_.n_heads, ", ")));
    if (!has(choices_.d_ff, arch.d_ff[i]))
      return no(fmt::format("layer {}: d_ff {} is not a choice ({})", i, arch.d_ff[i], fmt::join(choices_.d_ff, ", ")));
  }
  return true;
}

ModelConfig SearchSpace::model_config(const Arch& arch) const {
  ModelConfig c = base_.model;
  auto uniform = [](const auto& list) {
    return std::adjacent_find(list.begin(), list.end(), std::not_equal_to<>()) == list.end();
  };
  c.d_model = arch.d_model;
  c.n_layers = arch.n_layers();
  c.layers.clear();
  if (uniform(arch.mixers)) c.mixer = arch.mixers.front();
  else c.layers = arch.mixers;
  c.layer_heads.clear(), c.layer_d_ff.clear();
  c.n_heads = *std::max_element(arch.heads.begin(), arch.heads.end());
  if (!uniform(arch.heads)) c.layer_heads = arch.heads;
  c.d_ff = *std::max_element(arch.d_ff.begin(), arch.d_ff.end());
  if (!uniform(arch.d_ff)) c.layer_d_ff = arch.d_ff;
  // head_dim is implied when d_model = n_heads x head_dim and the layers agree on their heads.
  c.fixed_head_dim = c.layer_heads.empty() && c.n_heads * head_dim() == c.d_model ? 0 : head_dim();
  return c;
}

Recipe SearchSpace::recipe(const Arch& arch) const {
  Recipe r = base_;
  r.model = model_config(arch);
  return r;
}

std::string search_config_to_yaml(const SearchConfig& config) { return config_to_yaml(config); }

SearchSpace parse_search_space(const std::string& yaml, const std::string& source, const std::string& dir,
                               const std::vector<std::string>& overrides,
                               const std::vector<std::string>& recipe_overrides) {
  const YAML::Node root = parse_yaml_map(yaml, source, "keys (recipe:, space:, ...)", overrides);
  SearchConfig config;
  try {
    YamlReader reader(root, source);
    config.visit(reader);
    reader.check_unknown();
  } catch (const YAML::Exception& e) {
    fail("{}: {}", source, e.what());
  }
  std::vector<std::string> all = config.set;
  all.insert(all.end(), recipe_overrides.begin(), recipe_overrides.end());
  Recipe base = default_recipe();
  if (config.recipe.empty()) {
    base = parse_recipe(recipe_to_yaml(base), source + " (the default recipe)", all);
  } else {
    const fs::path path =
        fs::path(config.recipe).is_absolute() ? fs::path(config.recipe) : fs::path(dir) / config.recipe;
    if (!fs::exists(path)) fail("{}: recipe: no file '{}'", source, path.string());
    base = load_recipe(path.string(), all);
  }
  return SearchSpace(std::move(config), std::move(base), source);
}

SearchSpace load_search_space(const std::string& path, const std::vector<std::string>& overrides,
                              const std::vector<std::string>& recipe_overrides) {
  std::ifstream in(path);
  if (!in) fail("cannot read search file '{}'", path);
  std::stringstream text;
  text << in.rdbuf();
  return parse_search_space(text.str(), path, fs::path(path).parent_path().string(), overrides, recipe_overrides);
}

}  // namespace loom
