#include "loom/checkpoint/recipe.h"

#include <fstream>
#include <sstream>

namespace loom {

void DataConfig::validate(const std::string& source) const {
  if (corpus.empty()) fail("{}: data.corpus must not be empty", source);
  if (dir.empty()) fail("{}: data.dir must not be empty", source);
}

void TrainConfig::validate(const std::string& source) const {
  auto positive = [&](const char* key, double value) {
    if (!(value > 0)) fail("{}: train.{} must be positive, got {}", source, key, value);
  };
  auto non_negative = [&](const char* key, double value) {
    if (!(value >= 0)) fail("{}: train.{} must be >= 0, got {}", source, key, value);
  };
  positive("steps", steps);
  positive("batch_size", batch_size);
  positive("grad_accum", grad_accum);
  positive("bucket_mb", bucket_mb);
  positive("lr", lr);
  positive("eps", eps);
  positive("keep_last", keep_last);
  positive("log_every", log_every);
  non_negative("warmup_steps", warmup_steps);
  non_negative("weight_decay", weight_decay);
  non_negative("grad_clip", grad_clip);
  non_negative("z_loss", z_loss);
  non_negative("max_tokens", max_tokens);
  if (label_smoothing < 0 || label_smoothing >= 1)
    fail("{}: train.label_smoothing must be in [0, 1), got {}", source, label_smoothing);
  if (schedule != "cosine" && schedule != "inverse_sqrt")
    fail("{}: train.schedule must be cosine or inverse_sqrt, got '{}'", source, schedule);
  non_negative("eval_every", eval_every);
  non_negative("eval_batches", eval_batches);
  non_negative("save_every", save_every);
  if (min_lr_ratio < 0 || min_lr_ratio > 1)
    fail("{}: train.min_lr_ratio must be in [0, 1], got {}", source, min_lr_ratio);
  if (beta1 < 0 || beta1 >= 1) fail("{}: train.beta1 must be in [0, 1), got {}", source, beta1);
  if (beta2 < 0 || beta2 >= 1) fail("{}: train.beta2 must be in [0, 1), got {}", source, beta2);
  if (precision != "fp32" && precision != "bf16")
    fail("{}: train.precision must be fp32 or bf16, got '{}'", source, precision);
  if (on_divergence != "stop" && on_divergence != "rollback")
    fail("{}: train.on_divergence must be stop or rollback, got '{}'", source, on_divergence);
  non_negative("max_rollbacks", max_rollbacks);
  if (spike_factor != 0 && !(spike_factor > 1))
    fail("{}: train.spike_factor must be 0 (off) or > 1, got {}", source, spike_factor);
  if (!(rollback_lr_factor > 0 && rollback_lr_factor <= 1))
    fail("{}: train.rollback_lr_factor must be in (0, 1], got {}", source, rollback_lr_factor);
}

void Recipe::validate(const std::string& source) const {
  if (format != 1) fail("{}: recipe format {} is not supported (this loom reads format 1)", source, format);
  model.validate(source);
  task.validate(source);
  data.validate(source);
  train.validate(source);
  model.check_tensor_parallel(train.tensor_parallel, source);
  if (train.tensor_parallel > 1 && !task.is_lm())
    fail("{}: train.tensor_parallel {} trains language models (task lm), not task {}", source, train.tensor_parallel,
         task.name);
  if (train.tensor_parallel > 1 && train.label_smoothing > 0)
    fail("{}: train.tensor_parallel {} does not support train.label_smoothing", source, train.tensor_parallel);
  if (task.is_translation()) {
    if (!model.encoder_decoder())
      fail("{}: task translation trains an encoder-decoder: set model.arch: encoder_decoder (it is {})", source,
           model.arch);
    return;
  }
  if (model.encoder_decoder())
    fail("{}: model.arch encoder_decoder needs a source and a target: set task.name: translation", source);
  if (task.is_lm()) {
    if (!model.causal())
      fail("{}: task lm trains a decoder; model.arch is encoder (encoders classify: task listops)", source);
    return;
  }
  // A generated task fixes the vocabulary, the longest sequence and (for classification) the
  // model's head: the model must match it.
  const auto generated = make_task(task);
  if (model.vocab_size != generated->vocab_size())
    fail("{}: task {} has {} tokens: set model.vocab_size: {} (it is {})", source, task.name, generated->vocab_size(),
         generated->vocab_size(), model.vocab_size);
  const bool classifies = generated->n_classes() > 0;
  if (classifies != !model.causal())
    fail("{}: task {} {}: set model.arch: {}", source, task.name,
         classifies ? "classifies whole sequences" : "predicts tokens", classifies ? "encoder" : "decoder");
  if (classifies && model.n_classes != generated->n_classes())
    fail("{}: task {} has {} classes: set model.n_classes: {} (it is {})", source, task.name, generated->n_classes(),
         generated->n_classes(), model.n_classes);
  const int64_t needed = generated->max_length() + (classifies && model.pooling == "cls" ? 1 : 0);
  if (model.max_seq_len < needed)
    fail("{}: task {} needs sequences of {} tokens{}: raise model.max_seq_len (it is {})", source, task.name, needed,
         classifies && model.pooling == "cls" ? " (CLS included)" : "", model.max_seq_len);
}

Recipe default_recipe() { return Recipe{}; }

Recipe parse_recipe(const std::string& yaml, const std::string& source, const std::vector<std::string>& overrides) {
  const YAML::Node root = parse_yaml_map(yaml, source, "sections (model:, train:, ...)", overrides);
  try {
    return parse_config<Recipe>(root, source);
  } catch (const YAML::Exception& e) {  // the parser names the key it rejects; this is a backstop
    fail("{}: {}", source, e.what());
  }
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) fail("cannot read recipe '{}'", path);
  std::stringstream text;
  text << in.rdbuf();
  return parse_recipe(text.str(), path, overrides);
}

std::string recipe_to_yaml(const Recipe& recipe) { return config_to_yaml(recipe); }

}  // namespace loom
