// Architecture search spaces (HAT, Wang et al. 2020): the choices of each architecture dimension
// over a base recipe, and the sub-architectures (Arch) drawn from them. The largest choice of every
// dimension defines the supernet (search/supernet.h); every sub-model takes the front slice of its
// weights. A search file (recipes/search/*.yaml, docs/search.md):
//
//   format: 1
//   recipe: ../llama-tiny.yaml   # the base recipe, relative to this file: data, training, fixed options
//   set: [train.steps=2000]      # overrides of the base recipe (as `loom train --set`)
//   space:
//     d_model: [128, 192, 256]   # embedding width (the residual stream)
//     n_layers: [2, 3, 4]
//     d_ff: [256, 512, 688]      # per layer
//     n_heads: [2, 4]            # per layer, each head head_dim wide
//     head_dim: 64
//     mixer: [attention, local_attention]   # per layer, registry names
//   supernet: {...}  latency: {...}  evolve: {...}  proxies: {...}   # the commands' settings
#pragma once
#include <random>
#include <string>
#include <vector>

#include "loom/checkpoint/recipe.h"

namespace loom {

struct SpaceChoices {
  std::vector<int64_t> d_model, n_layers, d_ff, n_heads;
  std::vector<std::string> mixer;
  int64_t head_dim = 0;

  template <class V>
  void visit(V& v) {
    v("d_model", d_model, "embedding width choices (the residual stream; empty = the base recipe's)");
    v("n_layers", n_layers, "layer count choices (empty = the base recipe's)");
    v("d_ff", d_ff, "feed-forward width choices, per layer (empty = the base recipe's)");
    v("n_heads", n_heads, "attention head choices, per layer (empty = the base recipe's)");
    v("mixer", mixer, "token mixer choices, per layer, registry names (empty = the base recipe's)");
    v("head_dim", head_dim, "width of every head (0 = the largest d_model / the largest n_heads)");
  }
};

struct SupernetConfig {
  std::string sampling = "random";
  int64_t steps = 0;

  template <class V>
  void visit(V& v) {
    v("sampling", sampling,
      "sub-models per step: random (one, HAT) or sandwich (the largest, the smallest and a random one, gradients "
      "summed)");
    v("steps", steps, "optimizer steps of the supernet (0 = the base recipe's train.steps)");
  }
};

struct LatencyConfig {
  int64_t prompt = 64;
  int64_t decode = 32;
  int64_t repeats = 5;
  std::string weights = "f32";
  int64_t samples = 60;
  int64_t threads = 0;

  template <class V>
  void visit(V& v) {
    v("prompt", prompt, "tokens of the prefill that is timed");
    v("decode", decode, "tokens decoded one at a time after it, timed per token");
    v("repeats", repeats, "timed repeats per architecture (trimmed mean: the fastest and slowest dropped)");
    v("weights", weights, "weights of the fast engine: f32, int8 or q4_0");
    v("samples", samples, "architectures `loom search latency` measures to fit the predictor");
    v("threads", threads, "threads (0 = the machine's cores, as `loom generate`)");
  }
};

struct EvolveConfig {
  int64_t population = 40;
  int64_t parents = 10;
  int64_t mutations = 15;
  int64_t crossovers = 15;
  int64_t iterations = 10;
  double mutation_prob = 0.3;
  double latency_limit_ms = 0;
  int64_t eval_batches = 8;
  int64_t seed = 1;

  template <class V>
  void visit(V& v) {
    v("population", population, "candidates per generation");
    v("parents", parents, "the best candidates kept as parents of the next generation");
    v("mutations", mutations, "children by mutation per generation");
    v("crossovers", crossovers, "children by crossover per generation");
    v("iterations", iterations, "generations");
    v("mutation_prob", mutation_prob, "probability of each gene being redrawn in a mutation");
    v("latency_limit_ms", latency_limit_ms, "decode milliseconds per token a candidate may take (0 = no limit)");
    v("eval_batches", eval_batches, "validation batches of the fitness (loss with the supernet's weights)");
    v("seed", seed, "seed of the initial population, mutations and crossovers");
  }
};

struct ProxiesConfig {
  int64_t steps = 150;
  int64_t batches = 4;

  template <class V>
  void visit(V& v) {
    v("steps", steps, "training steps of each architecture's true loss (from scratch, the base recipe's settings)");
    v("batches", batches, "validation batches of that loss");
  }
};

struct SearchConfig {
  int64_t format = 1;
  std::string recipe;
  std::vector<std::string> set;
  SpaceChoices space;
  SupernetConfig supernet;
  LatencyConfig latency;
  EvolveConfig evolve;
  ProxiesConfig proxies;

  template <class V>
  void visit(V& v) {
    v("format", format, "search file format version");
    v("recipe", recipe, "the base recipe (relative to this file; empty = the built-in default)");
    v("set", set, "overrides of the base recipe, as `loom train --set` takes them");
    v.section("space", space, "the choices of each dimension");
    v.section("supernet", supernet, "`loom search supernet`");
    v.section("latency", latency, "latency measured on the fast engine at batch 1 (`loom search latency`)");
    v.section("evolve", evolve, "`loom search evolve` (HAT's evolutionary search)");
    v.section("proxies", proxies, "`loom search proxies` (training-free proxies against trained loss)");
  }
};

// One sub-architecture: the width of the residual stream and each layer's mixer, heads and FFN width.
struct Arch {
  int64_t d_model = 0;
  std::vector<std::string> mixers;
  std::vector<int64_t> heads, d_ff;
  int64_t n_layers() const { return static_cast<int64_t>(mixers.size()); }
  bool operator==(const Arch& o) const {
    return d_model == o.d_model && mixers == o.mixers && heads == o.heads && d_ff == o.d_ff;
  }
  bool operator!=(const Arch& o) const { return !(*this == o); }
};

// "256,attention:4:688,local_attention:2:512": d_model, then each layer as mixer:heads:d_ff.
std::string format_arch(const Arch& arch);
// The inverse; a malformed text is one loom::Error naming `where`.
Arch parse_arch(const std::string& text, const std::string& where);

class SearchSpace {
 public:
  // The resolved search: its settings, the base recipe (overrides applied) and the choices, each
  // checked (every mixer against the registry and the base's position scheme, head counts against
  // the key/value heads, widths positive); `source` names the file in errors.
  SearchSpace(SearchConfig config, Recipe base, std::string source);

  const SearchConfig& config() const { return config_; }
  const SpaceChoices& choices() const { return choices_; }  // resolved: none empty, sorted
  const Recipe& base() const { return base_; }
  int64_t head_dim() const { return choices_.head_dim; }

  Arch largest(const std::string& mixer = "") const;  // the widest and deepest, every layer `mixer` (default the first)
  Arch smallest() const;
  Arch sample(std::mt19937_64& rng) const;
  // Each gene (d_model, the layer count, every layer's mixer, heads and width) redrawn with
  // probability p; layers a larger count adds are drawn at random.
  Arch mutate(const Arch& arch, double p, std::mt19937_64& rng) const;
  // The layer count and d_model from either parent, each layer's genes from either parent that
  // has the layer.
  Arch crossover(const Arch& a, const Arch& b, std::mt19937_64& rng) const;
  // Whether every gene is one of the choices (`why`: the first that is not).
  bool contains(const Arch& arch, std::string* why = nullptr) const;

  // The sub-model's config: the base model with the arch's dimensions (per-layer lists only where
  // layers differ, so a uniform arch is an ordinary model that `loom export` converts).
  ModelConfig model_config(const Arch& arch) const;
  // The base recipe with the sub-model's config: what `loom train` retrains.
  Recipe recipe(const Arch& arch) const;

 private:
  SearchConfig config_;
  SpaceChoices choices_;
  Recipe base_;
  std::string source_;
};

// Reads a search file, applies `overrides` (search keys, "evolve.population=20"), resolves its base
// recipe (with the file's `set` and `recipe_overrides`), validates everything.
SearchSpace load_search_space(const std::string& path, const std::vector<std::string>& overrides = {},
                              const std::vector<std::string>& recipe_overrides = {});
// The same from YAML text; relative recipe paths resolve against `dir`.
SearchSpace parse_search_space(const std::string& yaml, const std::string& source, const std::string& dir,
                               const std::vector<std::string>& overrides = {},
                               const std::vector<std::string>& recipe_overrides = {});
std::string search_config_to_yaml(const SearchConfig& config);

}  // namespace loom
