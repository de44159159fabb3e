// HAT's weight-sharing SuperTransformer over a search space (search/space.h): the parameters of
// the largest model of every mixer choice, each sub-model taking the front slice of every weight
// (the front of each segment of a fused one: wqkv's q, k and v; a GLU's gate and up). Layers share
// everything but their mixers, whose weights each mixer choice holds apart.
//
// Training (train_supernet) builds each step's sampled sub-model as an ordinary Model with the
// sliced weights copied in, runs forward and backward on it, and adds its gradients into the
// supernet's slices; one AdamW step updates the supernet. A supernet run directory is laid out as
// `loom train`'s: DIR/step-NNNNNN/ written atomically with
//   supernet.safetensors   the shared weights (names: the Model's, a mixer's under
//                          layers.<i>.mixers.<mixer>.<param>)
//   optimizer.safetensors  AdamW's moments
//   search.yaml, recipe.yaml  the resolved search settings and base recipe
//   tokenizer.model        task lm
//   supernet.json          step, elapsed seconds, the last validation losses
// and DIR/metrics.jsonl.
#pragma once
#include <map>
#include <optional>
#include <string>

#include "loom/data/tokenizer.h"
#include "loom/io/safetensors.h"
#include "loom/models/model.h"
#include "loom/search/space.h"
#include "loom/train/train_step.h"

namespace loom {

class Supernet {
 public:
  // Initialized as the largest model of each mixer choice, built with the base recipe's seed; the
  // shared parameters come from the first mixer's.
  explicit Supernet(SearchSpace space);

  const SearchSpace& space() const { return space_; }
  // Every tensor, in a fixed order; leaves that AdamW updates.
  const NamedTensors& tensors() const { return tensors_; }
  // Whether a supernet tensor gets weight decay (as the largest model decides for it).
  bool decayed(const std::string& name) const { return decayed_.at(name); }
  // The supernet tensor a sub-model parameter is sliced from.
  std::string source_of(const Arch& arch, const std::string& parameter) const;

  // A sub-model (an ordinary Model, in training mode) with its slices of the supernet's weights
  // copied in. The arch must be in the space.
  Model build(const Arch& arch) const;
  // Adds `model`'s gradients (a model build(arch) made) into the supernet tensors' .grad().
  void add_gradients(const Arch& arch, Model& model);
  // Replaces the weights with a file's (every name present with its shape; nothing changes otherwise).
  void load(const Safetensors& file, const std::string& path);

 private:
  SearchSpace space_;
  NamedTensors tensors_;
  std::map<std::string, torch::Tensor> by_name_;
  std::map<std::string, Shard> fusions_;  // by supernet tensor name
  std::map<std::string, bool> decayed_;
};

// Calls f(whole_view, part_view) for each piece of `part` that is a slice of `whole`: the front
// of every dimension, except along a fused dimension (`whole_fused`, `part_fused`: the declared
// segments, or null), where each segment of `part` is the front of the matching segment of
// `whole`. Fails when `part` does not fit inside `whole`.
void for_each_slice(const torch::Tensor& whole, const Shard* whole_fused, const torch::Tensor& part,
                    const Shard* part_fused, const std::function<void(torch::Tensor, torch::Tensor)>& f);

struct SupernetOptions {
  std::string out_dir;
  bool resume = false;      // continue the run in out_dir exactly
  int64_t steps = -1;       // overrides supernet.steps when >= 0
  int64_t stop_after = -1;  // stop (with a checkpoint) after this many steps of this invocation
};

struct SupernetResult {
  std::string run_dir, checkpoint;
  int64_t steps = 0;
  double largest_loss = 0, smallest_loss = 0;  // validation loss of the largest and smallest sub-model
  double seconds = 0;                          // training time over all invocations
  bool interrupted = false;
};

// Trains the supernet (the base recipe's data, optimizer, schedule, precision, checkpointing).
SupernetResult train_supernet(const SearchSpace& space, const SupernetOptions& options);

// A supernet checkpoint (a step directory, or a run directory: its newest).
struct LoadedSupernet {
  std::string dir;
  std::unique_ptr<Supernet> net;
  std::optional<Tokenizer> tokenizer;
  int64_t step = 0;
  double seconds = 0;
};
// `overrides`: search settings changed for this use ("evolve.population=20"); a changed space
// no longer matches the weights, which is an error.
LoadedSupernet load_supernet(const std::string& path, const std::vector<std::string>& overrides = {});

// The sub-model `arch` of a supernet as an ordinary checkpoint at <out_dir>/step-NNNNNN (the
// supernet's step): the sub-model's recipe, the sliced weights, the tokenizer. Returns its path.
std::string extract_submodel(const LoadedSupernet& supernet, const Arch& arch, const std::string& out_dir);

// The validation batches a search scores sub-models on (the base recipe's split; at most
// `max_batches`, 0 = all).
std::vector<Batch> validation_batches(const SearchSpace& space, int64_t max_batches);

}  // namespace loom
