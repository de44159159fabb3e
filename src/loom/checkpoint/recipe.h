// A recipe: the model, its data and its training, read from YAML (recipes/*.yaml). The struct
// defaults are the built-in default recipe that `loom train` runs without arguments: a
// GPT-2-style model (4.2M parameters) on Jane Austen's novels that trains on 2 cores in about
// ten minutes. recipes/default.yaml spells it out (a test keeps the two equal).
#pragma once
#include <string>
#include <vector>

#include "loom/core/config.h"
#include "loom/data/tasks.h"
#include "loom/nn/config.h"

namespace loom {

struct DataConfig {
  std::string corpus = "austen";
  std::string dir = "data";  // cache of fetched text, tokenizers and token files

  template <class V>
  void visit(V& v) {
    v("corpus", corpus, "corpus name (`loom data --list`)");
    v("dir", dir, "directory caching fetched corpora, tokenizers and token files");
  }
  void validate(const std::string& source) const;
};

struct TrainConfig {
  int64_t steps = 1000;
  int64_t batch_size = 32;
  int64_t grad_accum = 1;
  int64_t tensor_parallel = 1;
  double bucket_mb = 25;
  double lr = 2e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 50;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;
  double z_loss = 0.0;
  std::string schedule = "cosine";
  double label_smoothing = 0.0;
  int64_t max_tokens = 0;
  std::string precision = "bf16";
  int64_t eval_every = 200;
  int64_t eval_batches = 0;
  int64_t save_every = 500;
  int64_t keep_last = 2;
  int64_t log_every = 20;
  int64_t seed = 1234;
  std::string on_divergence = "stop";
  int64_t max_rollbacks = 3;
  double spike_factor = 0;
  double rollback_lr_factor = 1;

  template <class V>
  void visit(V& v) {
    v("steps", steps, "optimizer steps");
    v("batch_size", batch_size, "sequences per micro-batch (task lm: each model.max_seq_len tokens)");
    v("grad_accum", grad_accum, "micro-batches accumulated per optimizer step");
    v("tensor_parallel", tensor_parallel,
      "processes each layer is sliced across (Megatron-LM: heads, FFN units, vocabulary); the processes of a "
      "multi-process run are tensor_parallel x data-parallel replicas");
    v("bucket_mb", bucket_mb,
      "data parallel: gradients are summed over the replicas in buckets of at most this many MiB, each started "
      "during backward as soon as it is full (DDP's bucket_cap_mb)");
    v("lr", lr, "peak learning rate");
    v("min_lr_ratio", min_lr_ratio, "final learning rate of the cosine decay, as a fraction of lr");
    v("warmup_steps", warmup_steps, "linear warm-up steps");
    v("weight_decay", weight_decay, "AdamW decoupled weight decay (matrices only)");
    v("beta1", beta1, "AdamW beta1");
    v("beta2", beta2, "AdamW beta2");
    v("eps", eps, "AdamW epsilon");
    v("grad_clip", grad_clip, "clip the global gradient norm to this (0 = off)");
    v("z_loss", z_loss, "weight of the z-loss, z_loss * log(Z)^2 of the output softmax (1e-4 in Wortsman et al. 2023)");
    v("schedule", schedule,
      "learning-rate schedule after warm-up: cosine (to min_lr_ratio at steps) or inverse_sqrt (fairseq)");
    v("label_smoothing", label_smoothing,
      "label-smoothed cross-entropy epsilon (0.1 in fairseq's transformer recipes)");
    v("max_tokens", max_tokens,
      "task translation: micro-batches of similar-length pairs up to this many tokens, padding counted (0 = batch_size "
      "pairs)");
    v("precision", precision, "fp32 or bf16 (bf16 autocast for matmuls, fp32 weights)");
    v("eval_every", eval_every, "validate every N steps (0 = only at the end)");
    v("eval_batches", eval_batches, "validation batches per evaluation (0 = the whole split)");
    v("save_every", save_every, "checkpoint every N steps (0 = only at the end)");
    v("keep_last", keep_last, "checkpoints kept in the run directory");
    v("log_every", log_every, "write a metrics line every N steps");
    v("seed", seed, "seed of initialization, batches and dropout");
    v("on_divergence", on_divergence,
      "a NaN/Inf loss or gradient norm, or a loss spike: stop (the run fails) or rollback (reload the last "
      "checkpoint, skip the batches since, continue)");
    v("max_rollbacks", max_rollbacks, "rollbacks a run makes at most; the next divergence stops it");
    v("spike_factor", spike_factor,
      "a step's loss above this times the running mean loss is a divergence too (0 = only NaN/Inf)");
    v("rollback_lr_factor", rollback_lr_factor, "each rollback multiplies the learning rate by this");
  }
  void validate(const std::string& source) const;
};

struct Recipe {
  int64_t format = 1;
  ModelConfig model;
  TaskConfig task;
  DataConfig data;
  TrainConfig train;

  template <class V>
  void visit(V& v) {
    v("format", format, "recipe format version");
    v.section("model", model, "architecture");
    v.section("task", task, "what to learn: language modelling on data.corpus, or a generated workbench task");
    v.section("data", data, "corpus and caches (task lm)");
    v.section("train", train, "optimization");
  }
  void validate(const std::string& source) const;
};

// The built-in default recipe: a small GPT-2-style model on Austen.
Recipe default_recipe();
// Reads a recipe file, applies --set overrides ("train.lr=1e-3"), validates. Every error names
// the file and the key.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from YAML text (e.g. a checkpoint's recipe.yaml); `source` names it in errors.
Recipe parse_recipe(const std::string& yaml, const std::string& source, const std::vector<std::string>& overrides = {});
std::string recipe_to_yaml(const Recipe& recipe);

}  // namespace loom
