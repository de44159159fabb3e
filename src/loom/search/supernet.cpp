#include "loom/search/supernet.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "loom/checkpoint/checkpoint.h"
#include "loom/core/error.h"
#include "loom/core/progress.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/train/adamw.h"
#include "loom/train/trainer.h"

namespace loom {
namespace fs = std::filesystem;
namespace {

constexpr const char* kMixerInfix = ".mixer.";

// "layers.3.mixer.wqkv.weight" -> 3; -1 for a parameter outside the layers' mixers.
int64_t mixer_layer(const std::string& name) {
  if (name.rfind("layers.", 0) != 0) return -1;
  const auto dot = name.find('.', 7);
  if (dot == std::string::npos || name.compare(dot, std::strlen(kMixerInfix), kMixerInfix) != 0) return -1;
  return std::stoll(name.substr(7, dot - 7));
}

std::string fmt_shape(const torch::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes().vec(), ", ")); }

}  // namespace

void for_each_slice(const torch::Tensor& whole, const Shard* whole_fused, const torch::Tensor& part,
                    const Shard* part_fused, const std::function<void(torch::Tensor, torch::Tensor)>& f) {
  if (whole.dim() != part.dim())
    fail("internal: a slice of shape {} cannot come from a tensor of shape {}", fmt_shape(part), fmt_shape(whole));
  if ((whole_fused == nullptr) != (part_fused == nullptr) ||
      (whole_fused &&
       (whole_fused->dim != part_fused->dim || whole_fused->segments.size() != part_fused->segments.size())))
    fail("internal: a slice of shape {} is fused differently from its tensor of shape {}", fmt_shape(part),
         fmt_shape(whole));
  torch::Tensor w = whole, p = part;
  const int64_t fused_dim = whole_fused ? whole_fused->dim : -1;
  for (int64_t d = 0; d < whole.dim(); ++d) {
    if (d == fused_dim) continue;
    if (part.size(d) > whole.size(d))
      fail("internal: a slice of shape {} does not fit in a tensor of shape {}", fmt_shape(part), fmt_shape(whole));
    w = w.narrow(d, 0, part.size(d));
  }
  if (fused_dim < 0) return f(w, p);
  int64_t at_whole = 0, at_part = 0;
  for (size_t s = 0; s < whole_fused->segments.size(); ++s) {
    const int64_t n_whole = whole_fused->segments[s], n_part = part_fused->segments[s];
    if (n_part > n_whole)
      fail("internal: segment {} of a slice ({} rows) exceeds its tensor's ({})", s, n_part, n_whole);
    f(w.narrow(fused_dim, at_whole, n_part), p.narrow(fused_dim, at_part, n_part));
    at_whole += n_whole, at_part += n_part;
  }
  if (at_whole != whole.size(fused_dim) || at_part != part.size(fused_dim))
    fail("internal: the declared segments of a fused tensor do not add up to its shape {}", fmt_shape(whole));
}

Supernet::Supernet(SearchSpace space) : space_(std::move(space)) {
  const auto& mixers = space_.choices().mixer;
  for (size_t m = 0; m < mixers.size(); ++m) {
    torch::manual_seed(static_cast<uint64_t>(space_.base().train.seed));
    const Arch largest = space_.largest(mixers[m]);
    Model model(space_.model_config(largest));
    for (const auto& p : model->named_parameters()) {
      const bool in_mixer = mixer_layer(p.key()) >= 0;
      if (m > 0 && !in_mixer) continue;  // shared: the first mixer's model holds it
      const std::string name = source_of(largest, p.key());
      auto t = p.value().detach().clone().set_requires_grad(true);
      tensors_.emplace_back(name, t);
      by_name_[name] = t;
      decayed_[name] = model->is_decayed(p.key(), p.value());
      auto fused = model->fusions().find(p.key());
      if (fused != model->fusions().end()) fusions_[name] = fused->second;
    }
  }
}

std::string Supernet::source_of(const Arch& arch, const std::string& parameter) const {
  const int64_t layer = mixer_layer(parameter);
  if (layer < 0) return parameter;
  if (layer >= arch.n_layers()) fail("internal: parameter '{}' of a {}-layer arch", parameter, arch.n_layers());
  const auto at = parameter.find(kMixerInfix);
  return parameter.substr(0, at) + ".mixers." + arch.mixers[layer] + "." +
         parameter.substr(at + std::strlen(kMixerInfix));
}

Model Supernet::build(const Arch& arch) const {
  std::string why;
  if (!space_.contains(arch, &why)) fail("architecture {} is not in the search space: {}", format_arch(arch), why);
  Model model(space_.model_config(arch));
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    const std::string name = source_of(arch, p.key());
    auto it = by_name_.find(name);
    if (it == by_name_.end()) fail("internal: the supernet has no tensor '{}' for '{}'", name, p.key());
    auto whole_fused = fusions_.find(name);
    auto part_fused = model->fusions().find(p.key());
    for_each_slice(it->second, whole_fused == fusions_.end() ? nullptr : &whole_fused->second, p.value(),
                   part_fused == model->fusions().end() ? nullptr : &part_fused->second,
                   [](torch::Tensor whole, torch::Tensor part) { part.copy_(whole); });
  }
  model->train();
  return model;
}

void Supernet::add_gradients(const Arch& arch, Model& model) {
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    if (!p.value().grad().defined()) continue;
    const std::string name = source_of(arch, p.key());
    torch::Tensor& whole = by_name_.at(name);
    if (!whole.grad().defined()) whole.mutable_grad() = torch::zeros_like(whole);
    auto whole_fused = fusions_.find(name);
    auto part_fused = model->fusions().find(p.key());
    for_each_slice(whole.grad(), whole_fused == fusions_.end() ? nullptr : &whole_fused->second, p.value().grad(),
                   part_fused == model->fusions().end() ? nullptr : &part_fused->second,
                   [](torch::Tensor whole_grad, torch::Tensor part_grad) { whole_grad.add_(part_grad); });
  }
}

void Supernet::load(const Safetensors& file, const std::string& path) {
  std::map<std::string, const torch::Tensor*> found;
  for (const auto& [name, t] : file.tensors) found[name] = &t;
  for (const auto& [name, t] : tensors_) {
    auto it = found.find(name);
    if (it == found.end()) fail("{}: no tensor '{}' (is this a supernet of this search space?)", path, name);
    if (it->second->sizes() != t.sizes())
      fail("{}: tensor '{}' has shape {}, the search space's supernet {}", path, name, fmt_shape(*it->second),
           fmt_shape(t));
  }
  if (found.size() != tensors_.size())
    fail("{}: {} tensors, the search space's supernet has {}", path, found.size(), tensors_.size());
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : tensors_) t.copy_(*found.at(name));
}

std::vector<Batch> validation_batches(const SearchSpace& space, int64_t max_batches) {
  Recipe recipe = space.base();
  recipe.train.eval_batches = max_batches;
  return prepare_data(recipe).valid;
}

namespace {

struct SupernetState {
  int64_t step = 0;
  double seconds = 0;
  double largest_loss = std::nan(""), smallest_loss = std::nan("");
};

// The search.yaml a checkpoint stores: the space's settings over the resolved base recipe beside
// it (recipe.yaml, its overrides already applied).
std::string stored_search_yaml(const SearchSpace& space) {
  SearchConfig config = space.config();
  config.recipe = "recipe.yaml";
  config.set.clear();
  return search_config_to_yaml(config);
}

nlohmann::json nullable(double v) { return std::isnan(v) ? nlohmann::json() : nlohmann::json(v); }

SupernetState read_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / "supernet.json").string();
  SupernetState s;
  try {
    const auto j = nlohmann::json::parse(read_file(path));
    s.step = j.at("step").get<int64_t>();
    s.seconds = j.at("elapsed_seconds").get<double>();
    if (!j.at("largest_loss").is_null()) s.largest_loss = j.at("largest_loss").get<double>();
    if (!j.at("smallest_loss").is_null()) s.smallest_loss = j.at("smallest_loss").get<double>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a supernet state: {}", path, e.what());
  }
  if (s.step < 0) fail("{}: negative step {}", path, s.step);
  return s;
}

std::string save_supernet(const std::string& run_dir, const Supernet& net, const AdamW& optimizer,
                          const Tokenizer* tokenizer, const SupernetState& state, int64_t keep_last) {
  CheckpointWriter writer(run_dir, fmt::format("step-{:06d}", state.step));
  const std::map<std::string, std::string> metadata{{"format", "loom-supernet-1"},
                                                    {"step", std::to_string(state.step)}};
  save_safetensors(writer.path("supernet.safetensors"), net.tensors(), metadata);
  save_safetensors(writer.path("optimizer.safetensors"), optimizer.state(), metadata);
  writer.add("search.yaml", stored_search_yaml(net.space()));
  writer.add("recipe.yaml", recipe_to_yaml(net.space().base()));
  if (tokenizer != nullptr) writer.add(tokenizer->file_name(), tokenizer->serialized());
  const nlohmann::json j{{"format", 1},
                         {"step", state.step},
                         {"elapsed_seconds", state.seconds},
                         {"largest_loss", nullable(state.largest_loss)},
                         {"smallest_loss", nullable(state.smallest_loss)}};
  writer.add("supernet.json", j.dump(2) + "\n");
  const std::string dir = writer.commit();
  prune_checkpoints(run_dir, static_cast<int>(keep_last));
  return dir;
}

// The supernet's newest step directory under `path` (or `path` itself).
std::string resolve_supernet(const std::string& path) {
  if (fs::exists(fs::path(path) / "supernet.safetensors")) return path;
  if (!fs::is_directory(path)) fail("no supernet at '{}' (not a directory)", path);
  const auto steps = list_checkpoints(path);
  if (steps.empty()) fail("no supernet checkpoint in '{}' (expected step-*/supernet.safetensors)", path);
  if (!fs::exists(fs::path(steps.back()) / "supernet.safetensors"))
    fail("'{}' holds checkpoints but no supernet (a `loom train` run?)", path);
  return steps.back();
}

// AdamW over the supernet's tensors, weight decay as the largest model decides.
AdamW make_optimizer(const Supernet& net) {
  const auto& tc = net.space().base().train;
  std::vector<AdamWGroup> groups(2);
  groups[0].weight_decay = tc.weight_decay;
  for (const auto& [name, t] : net.tensors()) groups[net.decayed(name) ? 0 : 1].params.push_back({name, t});
  return AdamW(groups, tc.beta1, tc.beta2, tc.eps);
}

}  // namespace

LoadedSupernet load_supernet(const std::string& path, const std::vector<std::string>& overrides) {
  LoadedSupernet out;
  out.dir = resolve_supernet(path);
  out.net = std::make_unique<Supernet>(load_search_space((fs::path(out.dir) / "search.yaml").string(), overrides));
  const std::string weights = (fs::path(out.dir) / "supernet.safetensors").string();
  out.net->load(load_safetensors(weights), weights);
  const auto state = read_state(out.dir);
  out.step = state.step, out.seconds = state.seconds;
  const fs::path spm = fs::path(out.dir) / "tokenizer.model";
  if (fs::exists(spm)) out.tokenizer = Tokenizer::load(spm.string());
  return out;
}

std::string extract_submodel(const LoadedSupernet& supernet, const Arch& arch, const std::string& out_dir) {
  Model model = supernet.net->build(arch);
  model->eval();
  TrainerState state;
  state.step = supernet.step;
  state.elapsed_seconds = supernet.seconds;
  return save_checkpoint(out_dir, supernet.net->space().recipe(arch), model,
                         supernet.tokenizer ? &*supernet.tokenizer : nullptr, {}, state, 1);
}

SupernetResult train_supernet(const SearchSpace& space, const SupernetOptions& options) {
  if (options.out_dir.empty()) fail("a supernet run needs an output directory (--out)");
  const Recipe& recipe = space.base();
  const auto& tc = recipe.train;
  const bool bf16 = tc.precision == "bf16";
  const bool resuming = !list_checkpoints(options.out_dir).empty();
  if (resuming && !options.resume)
    fail("'{}' already holds a supernet run: pass --resume to continue it, or choose another --out", options.out_dir);
  if (!resuming && options.resume) fail("--resume: no supernet checkpoint in '{}'", options.out_dir);

  Supernet net(space);
  AdamW optimizer = make_optimizer(net);
  SupernetState state;
  if (resuming) {
    const std::string dir = resolve_supernet(options.out_dir);
    const auto saved = load_search_space((fs::path(dir) / "search.yaml").string());
    if (stored_search_yaml(saved) != stored_search_yaml(space) ||
        recipe_to_yaml(saved.base()) != recipe_to_yaml(space.base()))
      fail(
          "--resume: '{}' was trained with other search settings or another base recipe (its search.yaml and "
          "recipe.yaml); resume with the same search file",
          dir);
    const std::string weights = (fs::path(dir) / "supernet.safetensors").string();
    net.load(load_safetensors(weights), weights);
    load_optimizer_state(dir, optimizer);
    state = read_state(dir);
  }
  const int64_t steps = options.steps >= 0
                            ? options.steps
                            : (space.config().supernet.steps > 0 ? space.config().supernet.steps : tc.steps);
  RunData data = prepare_data(recipe);
  const Tokenizer* tokenizer = data.tokenizer ? &*data.tokenizer : nullptr;
  spdlog::info(
      "supernet: {} tensors, {:.2f}M parameters; {}; sampling {}; {} steps", net.tensors().size(),
      [&] {
        int64_t n = 0;
        for (const auto& [name, t] : net.tensors()) n += t.numel();
        return static_cast<double>(n) / 1e6;
      }(),
      data.summary, space.config().supernet.sampling, steps);

  const bool sandwich = space.config().supernet.sampling == "sandwich";
  auto archs_of_step = [&](int64_t step) {
    std::mt19937_64 rng(static_cast<uint64_t>(tc.seed) * 1000003u + static_cast<uint64_t>(step));
    std::vector<Arch> archs;
    if (sandwich) archs = {space.largest(), space.smallest()};
    archs.push_back(space.sample(rng));
    return archs;
  };
  auto validate = [&] {
    for (auto [arch, out] :
         {std::pair<Arch, double*>{space.largest(), &state.largest_loss}, {space.smallest(), &state.smallest_loss}}) {
      Model m = net.build(arch);
      *out = evaluate_loss(m, data.valid, bf16);
    }
  };
  fs::create_directories(options.out_dir);
  MetricsLog metrics((fs::path(options.out_dir) / "metrics.jsonl").string(), state.step);
  StopSignals stop;
  Progress progress("supernet", state.step, steps, tc.log_every);
  const double seconds_before = state.seconds;
  SupernetResult result;
  result.run_dir = options.out_dir;
  int64_t done_here = 0;
  auto checkpoint = [&] {
    state.seconds = seconds_before + progress.elapsed_seconds();
    result.checkpoint = save_supernet(options.out_dir, net, optimizer, tokenizer, state, tc.keep_last);
  };
  while (state.step < steps) {
    const int64_t step = state.step;
    torch::manual_seed(static_cast<uint64_t>(tc.seed) + static_cast<uint64_t>(step));  // dropout
    for (const auto& [name, t] : net.tensors())
      if (t.grad().defined()) t.mutable_grad().zero_();
    double loss_sum = 0;
    const auto archs = archs_of_step(step);
    for (const auto& arch : archs) {
      Model model = net.build(arch);
      for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
        auto loss = batch_loss(model, data.sample(step, micro), bf16, tc.z_loss) / static_cast<double>(tc.grad_accum);
        loss.backward();
        loss_sum += loss.item<double>();
      }
      net.add_gradients(arch, model);
    }
    const double loss = loss_sum / static_cast<double>(archs.size());
    if (!std::isfinite(loss)) fail("the supernet's training loss became {} at step {}", loss, step);
    std::vector<torch::Tensor> grads;
    for (const auto& [name, t] : net.tensors())
      if (t.grad().defined()) grads.push_back(t);
    const double grad_norm = tc.grad_clip > 0 ? torch::nn::utils::clip_grad_norm_(grads, tc.grad_clip) : std::nan("");
    const double lr = tc.schedule == "inverse_sqrt" ? inverse_sqrt_lr(step, tc.warmup_steps, tc.lr)
                                                    : cosine_lr(step, steps, tc.warmup_steps, tc.lr, tc.min_lr_ratio);
    optimizer.step(lr);
    state.step = step + 1;
    ++done_here;
    const bool last = state.step == steps;
    if ((tc.eval_every > 0 && state.step % tc.eval_every == 0) || last) validate();
    if (tc.log_every > 0 && (state.step % tc.log_every == 0 || last)) {
      nlohmann::json line{{"step", state.step},
                          {"loss", loss},
                          {"lr", lr},
                          {"grad_norm", nullable(grad_norm)},
                          {"archs", [&] {
                             std::vector<std::string> out;
                             for (const auto& a : archs) out.push_back(format_arch(a));
                             return out;
                           }()}};
      if (!std::isnan(state.largest_loss)) line["valid_largest"] = state.largest_loss;
      if (!std::isnan(state.smallest_loss)) line["valid_smallest"] = state.smallest_loss;
      metrics.write(line);
    }
    progress.update(state.step, fmt::format("loss {:.3f} | valid largest {:.3f} smallest {:.3f}", loss,
                                            state.largest_loss, state.smallest_loss));
    const bool stopping = stop.requested() || (options.stop_after >= 0 && done_here >= options.stop_after);
    if (last || stopping || (tc.save_every > 0 && state.step % tc.save_every == 0)) checkpoint();
    if (stopping && !last) {
      result.interrupted = true;
      break;
    }
  }
  progress.finish();
  if (result.checkpoint.empty()) {  // nothing to train: the run was complete, or has 0 steps
    if (std::isnan(state.largest_loss)) validate();
    if (resuming) result.checkpoint = resolve_supernet(options.out_dir);
    else checkpoint();
  }
  result.steps = state.step;
  result.largest_loss = state.largest_loss, result.smallest_loss = state.smallest_loss;
  result.seconds = seconds_before + progress.elapsed_seconds();
  return result;
}

}  // namespace loom
