#include "loom/train/trainer.h"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "loom/checkpoint/checkpoint.h"
#include "loom/core/log.h"
#include "loom/core/progress.h"
#include "loom/data/lm_data.h"
#include "loom/data/tasks.h"
#include "loom/data/translation_data.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/train/tensor_parallel.h"
#include "loom/train/train_step.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

std::atomic<int> g_stop_signal{0};

void on_stop_signal(int signal) { g_stop_signal = signal; }

Batch to_batch(TranslationBatch b) { return Batch{std::move(b.inputs), std::move(b.targets), std::move(b.source)}; }

}  // namespace

StopSignals::StopSignals() {
  g_stop_signal = 0;
  previous_int_ = std::signal(SIGINT, on_stop_signal);
  previous_term_ = std::signal(SIGTERM, on_stop_signal);
}
StopSignals::~StopSignals() {
  std::signal(SIGINT, previous_int_);
  std::signal(SIGTERM, previous_term_);
}
bool StopSignals::requested() const { return g_stop_signal != 0; }

MetricsLog::MetricsLog(const std::string& path, int64_t step) {
  std::error_code ec;
  if (fs::exists(path, ec)) {
    const std::string text = read_file(path);
    std::string kept;
    for (size_t at = 0, end; (end = text.find('\n', at)) != std::string::npos; at = end + 1) {
      const auto row = nlohmann::json::parse(text.begin() + static_cast<long>(at),
                                             text.begin() + static_cast<long>(end), nullptr, false);
      if (row.is_object() && row.contains("step") && row["step"].is_number_integer() && row["step"] <= step)
        kept.append(text, at, end - at + 1);
    }
    if (kept.size() != text.size()) write_file_atomic(path, kept);
  }
  out_.open(path, std::ios::app);
  if (!out_) fail("cannot write metrics to {}", path);
  path_ = path;
}

void MetricsLog::rewind(int64_t step) {
  out_.close();
  *this = MetricsLog(path_, step);
}

void MetricsLog::write(const nlohmann::json& row) {
  out_ << row.dump() << '\n';
  out_.flush();
}

RunData prepare_data(const Recipe& recipe) {
  const auto& tc = recipe.train;
  const auto& mc = recipe.model;
  RunData run;
  const auto seed = static_cast<uint64_t>(tc.seed);
  if (recipe.task.is_translation()) {
    run.translation =
        std::make_unique<TranslationData>(recipe.data.corpus, recipe.data.dir, recipe.task.src, recipe.task.tgt,
                                          static_cast<int>(mc.vocab_size), mc.max_seq_len);
    TranslationData* t = run.translation.get();
    run.tokenizer = t->tokenizer();
    if (run.tokenizer->vocab_size() != mc.vocab_size)
      fail("the tokenizer {} has {} tokens but model.vocab_size is {}", t->tokenizer_path(),
           run.tokenizer->vocab_size(), mc.vocab_size);
    const int64_t sentences = tc.max_tokens > 0 ? 0 : tc.batch_size;
    t->make_training_batches(tc.max_tokens, sentences);
    run.sample = [t, seed, accum = tc.grad_accum](int64_t step, int64_t micro) {
      return to_batch(t->sample(seed, step, micro, accum));
    };
    for (auto& b : t->split_batches("valid", tc.max_tokens, sentences)) run.valid.push_back(to_batch(std::move(b)));
    if (tc.eval_batches > 0 && static_cast<int64_t>(run.valid.size()) > tc.eval_batches)
      run.valid.resize(tc.eval_batches);
    run.sequence_length = mc.max_seq_len;
    run.summary = fmt::format("{} {}->{}: {} training pairs in {} batches per epoch, {} validation pairs",
                              recipe.data.corpus, recipe.task.src, recipe.task.tgt, t->split("train").pairs.size(),
                              t->batches_per_epoch(), t->split("valid").pairs.size());
    return run;
  }
  if (!recipe.task.is_lm()) {
    run.task = std::make_unique<TaskData>(recipe.task);
    const TaskData* task = run.task.get();
    run.sample = [task, seed, batch = tc.batch_size](int64_t step, int64_t micro) {
      return task->sample(seed, step, micro, batch);
    };
    run.valid = to_batches(task->split_batches("valid", tc.batch_size));
    if (tc.eval_batches > 0 && static_cast<int64_t>(run.valid.size()) > tc.eval_batches)
      run.valid.resize(tc.eval_batches);
    run.sequence_length = task->task().max_length();
    run.summary =
        fmt::format("task {}: {} training examples, {} validation, {} test; sequences of {} tokens", recipe.task.name,
                    recipe.task.train_examples > 0 ? std::to_string(recipe.task.train_examples) : "unlimited",
                    recipe.task.valid_examples, recipe.task.test_examples, run.sequence_length);
    return run;
  }
  const LMData data = prepare_lm_data(recipe.data.corpus, static_cast<int>(mc.vocab_size), recipe.data.dir);
  run.tokenizer = Tokenizer::load(data.tokenizer_model);
  if (run.tokenizer->vocab_size() != mc.vocab_size)
    fail("the tokenizer {} has {} tokens but model.vocab_size is {}", data.tokenizer_model, run.tokenizer->vocab_size(),
         mc.vocab_size);
  run.train_tokens = std::make_unique<TokenStream>(data.train_tokens);
  run.valid_tokens = std::make_unique<TokenStream>(data.valid_tokens);
  run.batcher =
      std::make_unique<LMBatcher>(*run.train_tokens, static_cast<int>(tc.batch_size), static_cast<int>(mc.max_seq_len));
  const LMBatcher* batcher = run.batcher.get();
  run.sample = [batcher, seed](int64_t step, int64_t micro) {
    return batcher->sample(seed, step, static_cast<int>(micro));
  };
  run.valid = to_batches(LMBatcher(*run.valid_tokens, static_cast<int>(tc.batch_size), static_cast<int>(mc.max_seq_len))
                             .eval_batches(static_cast<int>(tc.eval_batches)));
  run.unigram_entropy = unigram_entropy(*run.train_tokens);
  run.sequence_length = mc.max_seq_len;
  run.summary =
      fmt::format("data: {} train tokens, {} validation tokens", run.train_tokens->size(), run.valid_tokens->size());
  return run;
}

namespace {

std::string percent(double fraction) { return fmt::format("{:.1f}%", 100 * fraction); }

std::string human_rate(double tokens_per_second) {
  return tokens_per_second >= 1000 ? fmt::format("{:.1f}k tok/s", tokens_per_second / 1000)
                                   : fmt::format("{:.0f} tok/s", tokens_per_second);
}

// Data parallel: rank 0's trainer state, weights and optimizer moments on every rank.
void share_from_rank0(Communicator& dist, Model& model, AdamW& optimizer, TrainerState& state) {
  auto scalars = torch::tensor(
      {static_cast<double>(state.step), static_cast<double>(state.tokens_seen), state.elapsed_seconds, state.valid_loss,
       static_cast<double>(state.data_offset), state.lr_scale, static_cast<double>(state.rollbacks), state.loss_mean,
       static_cast<double>(state.loss_steps), static_cast<double>(optimizer.step_count())},
      torch::kDouble);
  std::vector<torch::Tensor> tensors{scalars};
  for (const auto& p : model->parameters()) tensors.push_back(p.detach());
  auto moments = optimizer.state();
  for (const auto& m : moments) tensors.push_back(m.second);
  dist.broadcast(tensors);
  if (dist.rank() == 0) return;
  const double* v = scalars.data_ptr<double>();
  state.step = static_cast<int64_t>(v[0]), state.tokens_seen = static_cast<int64_t>(v[1]);
  state.elapsed_seconds = v[2], state.valid_loss = v[3], state.data_offset = static_cast<int64_t>(v[4]);
  state.lr_scale = v[5], state.rollbacks = static_cast<int64_t>(v[6]), state.loss_mean = v[7];
  state.loss_steps = static_cast<int64_t>(v[8]);
  optimizer.load_state(moments, static_cast<int64_t>(v[9]), "rank 0");
}

// Tensor parallel: this rank's slices of the whole model's parameters and AdamW moments.
void slice_into(Model& slice, AdamW& slice_optimizer, Model& whole, const AdamW& whole_optimizer) {
  torch::NoGradGuard no_grad;
  const auto& c = slice->config();
  auto cut = [&](const std::string& name, const torch::Tensor& t) {
    const auto shard = slice->shards().find(name);
    return shard == slice->shards().end() ? t : slice_parameter(t, shard->second, c.tp_rank, c.tp_size);
  };
  auto whole_params = whole->named_parameters();
  for (auto& p : slice->named_parameters()) p.value().copy_(cut(p.key(), whole_params[p.key()]));
  std::vector<std::pair<std::string, torch::Tensor>> moments;
  for (const auto& [name, t] : whole_optimizer.state())  // "<parameter>.exp_avg", "<parameter>.exp_avg_sq"
    moments.emplace_back(name, cut(name.substr(0, name.rfind('.')), t));
  slice_optimizer.load_state(moments, whole_optimizer.step_count(), "the whole model's optimizer");
}

// Tensor parallel: the whole model's parameters and AdamW moments from every rank's slices
// (every rank of the group calls it).
void join_into(Model& whole, AdamW& whole_optimizer, Model& slice, const AdamW& slice_optimizer, Communicator& group) {
  torch::NoGradGuard no_grad;
  auto glue = [&](const std::string& name, const torch::Tensor& t) {
    const auto shard = slice->shards().find(name);
    return shard == slice->shards().end() ? t : join_parameter(t, shard->second, group);
  };
  auto whole_params = whole->named_parameters();
  for (const auto& p : slice->named_parameters()) whole_params[p.key()].copy_(glue(p.key(), p.value()));
  std::vector<std::pair<std::string, torch::Tensor>> moments;
  for (const auto& [name, t] : slice_optimizer.state())
    moments.emplace_back(name, glue(name.substr(0, name.rfind('.')), t));
  whole_optimizer.load_state(moments, slice_optimizer.step_count(), "the slices' optimizers");
}

}  // namespace

void check_process_count(const TrainConfig& train, int processes) {
  const int64_t tp = train.tensor_parallel;
  if (processes % tp != 0)
    fail("train.tensor_parallel {} needs a multiple of {} processes (e.g. --nproc {}); this run has {}", tp, tp, tp,
         processes);
}

TrainResult train(Recipe recipe, const TrainOptions& options) {
  Communicator* dist = options.dist;
  const bool rank0 = dist == nullptr || dist->rank() == 0;
  TrainResult result;
  std::string resume_dir;
  if (!rank0) {
    // Rank 0's resolved recipe (and whether it resumes): this host may hold neither file.
    recipe = parse_recipe(dist->share("recipe", ""), "rank 0's recipe");
    resume_dir = dist->share("resume", "");
  } else if (!options.resume.empty()) {
    resume_dir = resolve_checkpoint(options.resume);
    const std::string recipe_path = (fs::path(resume_dir) / "recipe.yaml").string();
    recipe = parse_recipe(read_file(recipe_path), recipe_path);
    result.run_dir = options.out_dir.empty() ? fs::path(resume_dir).parent_path().string() : options.out_dir;
  } else {
    result.run_dir = options.out_dir.empty() ? "runs/default" : options.out_dir;
    if (fs::exists(result.run_dir) && !list_checkpoints(result.run_dir).empty())
      fail(
          "run directory '{}' already holds checkpoints: continue it with --resume {} or choose "
          "another --out",
          result.run_dir, result.run_dir);
  }
  if (rank0 && options.steps >= 0) recipe.train.steps = options.steps;
  recipe.validate("recipe");
  if (dist != nullptr && rank0) {
    dist->share("recipe", recipe_to_yaml(recipe));
    dist->share("resume", resume_dir);
  }
  const auto& tc = recipe.train;
  const auto& mc = recipe.model;
  if (rank0) fs::create_directories(result.run_dir);

  // One process per host builds the data cache; the others wait, then read it.
  const bool builds_data = dist == nullptr || dist->env().local_rank == 0;
  std::optional<RunData> prepared;
  if (builds_data) prepared.emplace(prepare_data(recipe));
  if (dist != nullptr) dist->barrier();
  if (!builds_data) prepared.emplace(prepare_data(recipe));
  const RunData& data = *prepared;
  const Tokenizer* tokenizer = data.tokenizer ? &*data.tokenizer : nullptr;
  result.unigram_entropy = data.unigram_entropy;

  // Process layout: tensor_parallel T consecutive ranks slice each layer (a tensor-parallel group);
  // the world / T groups are data-parallel replicas (rank r: slice r % T of replica r / T).
  const int64_t tp = tc.tensor_parallel;
  const int world = dist != nullptr ? dist->size() : 1;
  check_process_count(tc, world);
  const int tp_rank = dist != nullptr ? static_cast<int>(dist->rank() % tp) : 0;
  const int replica = dist != nullptr ? static_cast<int>(dist->rank() / tp) : 0;
  const int replicas = static_cast<int>(world / tp);
  std::unique_ptr<Communicator> tp_group, dp_group;
  if (tp > 1) {
    std::vector<int> slices, same_slice;
    for (int i = 0; i < tp; ++i) slices.push_back(replica * static_cast<int>(tp) + i);
    for (int j = 0; j < replicas; ++j) same_slice.push_back(j * static_cast<int>(tp) + tp_rank);
    tp_group = std::make_unique<Communicator>(*dist, fmt::format("tp{}", replica), slices);
    if (replicas > 1) dp_group = std::make_unique<Communicator>(*dist, fmt::format("dp{}", tp_rank), same_slice);
  }
  Communicator* data_group = tp > 1 ? dp_group.get() : dist;  // null: one replica
  auto comm_seconds = [&] {
    double total = 0;
    for (const Communicator* c : {dist, tp_group.get(), dp_group.get()})
      if (c != nullptr) total += c->communication_seconds();
    return total;
  };

  Model model{nullptr};  // the whole model: what checkpoints hold
  TrainerState state;
  if (resume_dir.empty() || !rank0) {
    torch::manual_seed(static_cast<uint64_t>(tc.seed));
    model = Model(mc);
  } else {
    auto loaded = load_checkpoint(resume_dir);
    if (tokenizer != nullptr && loaded.tokenizer.serialized() != tokenizer->serialized())
      fail("{}: its tokenizer differs from the one in {}: the data cache changed since the run started", resume_dir,
           recipe.data.dir);
    model = loaded.model;
    state = loaded.state;
  }
  // What this rank trains: the whole model, or its tensor-parallel slice (whose whole optimizer
  // state lives in whole_state, for checkpoints).
  Model trained = model;
  std::unique_ptr<CommunicatorOps> tp_ops;
  std::optional<TrainStep> whole_state;
  if (tp > 1) {
    ModelConfig slice = mc;
    slice.tp_size = tp, slice.tp_rank = tp_rank;
    trained = Model(slice);
    tp_ops = std::make_unique<CommunicatorOps>(*tp_group);
    trained->set_tensor_parallel(tp_ops.get());
    whole_state.emplace(model, tc);
  }
  TrainStep step_runner(trained, tc);
  AdamW& whole_optimizer = whole_state ? whole_state->optimizer() : step_runner.optimizer();
  if (!resume_dir.empty() && rank0) {
    load_optimizer_state(resume_dir, whole_optimizer);
    logger().info("resuming {} at step {}", resume_dir, state.step);
  }
  if (dist != nullptr) share_from_rank0(*dist, model, whole_optimizer, state);
  if (tp > 1) slice_into(trained, step_runner.optimizer(), model, whole_optimizer);
  if (data_group != nullptr)
    step_runner.set_communicator(data_group, static_cast<int64_t>(std::min(tc.bucket_mb, 1e9) * (1 << 20)));
  step_runner.set_lr_scale(state.lr_scale);
  if (state.step >= tc.steps)
    fail("the run is already at step {} of {}: raise --steps to continue", state.step, tc.steps);

  logger().info("model: {:.2f}M parameters, {} {} layers x d_model {}, context {}; {}; run dir {}{}",
                model->num_parameters() / 1e6, mc.n_layers, mc.arch, mc.d_model, mc.max_seq_len, data.summary,
                result.run_dir,
                dist == nullptr ? std::string()
                : tp > 1        ? fmt::format("; {} data-parallel replicas x {} tensor-parallel slices", replicas, tp)
                                : fmt::format("; data parallel over {} processes", dist->size()));
  std::optional<MetricsLog> metrics;  // rank 0's
  if (rank0) metrics.emplace((fs::path(result.run_dir) / "metrics.jsonl").string(), state.step);
  const int64_t tokens_per_batch_step = tc.batch_size * tc.grad_accum * data.sequence_length;
  Progress progress("train", state.step, tc.steps, tc.log_every);
  StopSignals stop;
  const double elapsed_before = state.elapsed_seconds;
  double window_loss = 0;
  int64_t window_steps = 0;
  int64_t window_tokens = 0;
  auto window_start = std::chrono::steady_clock::now();
  double window_comm = comm_seconds();  // at the window's start
  double rate = 0;

  auto save = [&] {
    if (tp > 1) join_into(model, whole_optimizer, trained, step_runner.optimizer(), *tp_group);
    if (!rank0) return;
    state.elapsed_seconds = elapsed_before + progress.elapsed_seconds();
    result.checkpoint =
        save_checkpoint(result.run_dir, recipe, model, tokenizer, whole_optimizer.state(), state, tc.keep_last);
  };
  const bool bf16 = tc.precision == "bf16";
  auto validate = [&] {
    if (!rank0 && tp == 1) return;  // a sliced model validates on all its ranks
    if (data.task) {
      const TaskScore score = evaluate_task(model, data.valid, bf16);
      state.valid_loss = score.loss;
      progress.finish();
      if (data.task->task().n_classes() > 0)
        logger().info("step {}: validation loss {:.4f}, accuracy {}", state.step, score.loss,
                      percent(score.exact_match));
      else
        logger().info("step {}: validation loss {:.4f}, exact match {}, token accuracy {}", state.step, score.loss,
                      percent(score.exact_match), percent(score.token_accuracy));
      metrics->write({{"step", state.step},
                      {"valid_loss", score.loss},
                      {"valid_exact_match", score.exact_match},
                      {"valid_token_accuracy", score.token_accuracy}});
      return;
    }
    state.valid_loss = evaluate_loss(trained, data.valid, bf16);
    if (!rank0) return;
    progress.finish();
    if (data.translation)
      logger().info("step {}: validation loss {:.4f} nats/target token (perplexity {:.2f})", state.step,
                    state.valid_loss, std::exp(state.valid_loss));
    else
      logger().info("step {}: validation loss {:.4f} (perplexity {:.2f}; unigram entropy {:.4f})", state.step,
                    state.valid_loss, std::exp(state.valid_loss), result.unigram_entropy);
    metrics->write({{"step", state.step}, {"valid_loss", state.valid_loss}, {"valid_ppl", std::exp(state.valid_loss)}});
  };

  // A divergence (train.on_divergence rollback): the weights, optimizer and trainer state of the
  // run's last checkpoint come back, the batches from there to the diverged step are skipped, and
  // the learning rate is scaled (PaLM's recovery from loss spikes, Chowdhery et al. 2022, 5.1).
  auto roll_back = [&](int64_t step, const std::string& why) {
    // Every rank sees the same loss: rank 0, which holds the checkpoints, decides and restores.
    const auto saved = rank0 ? list_checkpoints(result.run_dir) : std::vector<std::string>{};
    bool give_up = tc.on_divergence != "rollback" || state.rollbacks >= tc.max_rollbacks || saved.empty();
    if (dist != nullptr) {
      auto flag = torch::tensor({give_up ? 1.0 : 0.0}, torch::kDouble);
      dist->broadcast({flag});
      give_up = flag.item<double>() != 0;
      if (give_up && !rank0) throw TrainingDiverged(fmt::format("{} at step {} (rank 0 ended the run)", why, step));
    }
    if (give_up)
      throw TrainingDiverged(
          fmt::format("{} at step {}; the last checkpoint is {} ({})", why, step, saved.empty() ? "none" : saved.back(),
                      tc.on_divergence != "rollback" ? "try a lower train.lr, or train.on_divergence: rollback"
                      : saved.empty()                ? "nothing to roll back to: lower train.save_every"
                                      : fmt::format("after {} rollbacks (train.max_rollbacks)", state.rollbacks)));
    TrainerState next;
    if (rank0) {
      const LoadedModel loaded = load_checkpoint(saved.back());
      {
        torch::NoGradGuard no_grad;
        auto source = loaded.model->named_parameters();
        for (auto& p : model->named_parameters()) p.value().copy_(source[p.key()]);
      }
      load_optimizer_state(saved.back(), whole_optimizer);
      next = loaded.state;
    }
    if (dist != nullptr) share_from_rank0(*dist, model, whole_optimizer, next);
    if (tp > 1) slice_into(trained, step_runner.optimizer(), model, whole_optimizer);
    next.data_offset = state.data_offset + (step + 1 - next.step);
    next.lr_scale = state.lr_scale * tc.rollback_lr_factor;
    next.rollbacks = state.rollbacks + 1;
    next.elapsed_seconds = elapsed_before + progress.elapsed_seconds();
    step_runner.set_lr_scale(next.lr_scale);
    progress.finish();
    logger().warn(
        "{} at step {}: rolled back to {} (step {}), skipping {} batches, learning rate x{:.3g}; rollback {} of {}",
        why, step, rank0 ? saved.back() : "rank 0's last checkpoint", next.step, next.data_offset - state.data_offset,
        next.lr_scale, next.rollbacks, tc.max_rollbacks);
    if (rank0) metrics->rewind(next.step);
    if (rank0)
      metrics->write({{"step", step},
                      {"event", "rollback"},
                      {"reason", why},
                      {"to_step", next.step},
                      {"data_offset", next.data_offset},
                      {"lr_scale", next.lr_scale},
                      {"rollbacks", next.rollbacks}});
    state = next;
    window_loss = 0, window_steps = 0, window_tokens = 0;
    window_start = std::chrono::steady_clock::now();
  };

  const int64_t first_step = state.step;
  while (state.step < tc.steps) {
    const int64_t step = state.step;
    // Step s trains on batch s + data_offset (batches skipped by rollbacks).
    const int64_t batch = step + state.data_offset;
    // Dropout draws from the global generator: seed it per batch so resume replays it exactly.
    // Each rank draws its own dropout masks (rank 0 those of one process).
    // (The slices of one replica draw the same masks: dropout acts on whole activations.)
    const uint64_t rank_key =
        data_group != nullptr ? static_cast<uint64_t>(data_group->rank()) * 0x9E3779B97F4A7C15ULL : 0;
    torch::manual_seed(static_cast<uint64_t>(tc.seed) * 1000003ULL + static_cast<uint64_t>(batch) + rank_key);
    StepResult r = step_runner.run(
        step, [&](int64_t micro) { return data.sample(batch, micro); },
        /*track_stats=*/(step + 1) % tc.log_every == 0);
    // Translation batches vary in size: count their target tokens (as fairseq's wps).
    const int64_t step_tokens = data.translation ? r.scored : tokens_per_batch_step;
    if (options.after_step) options.after_step(step, r, trained);
    if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
      roll_back(step, fmt::format("the {} became {}", std::isfinite(r.loss) ? "gradient norm" : "loss",
                                  std::isfinite(r.loss) ? r.grad_norm : r.loss));
      continue;
    }
    // Spikes are measured against the running mean of the steps before (after 20 of them).
    if (tc.spike_factor > 0 && state.loss_steps >= 20 && r.loss > tc.spike_factor * state.loss_mean) {
      roll_back(step, fmt::format("the loss spiked to {:.4g}, {:.1f} times its running mean {:.4g}", r.loss,
                                  r.loss / state.loss_mean, state.loss_mean));
      continue;
    }
    state.loss_mean = state.loss_steps == 0 ? r.loss : 0.95 * state.loss_mean + 0.05 * r.loss;
    ++state.loss_steps;
    state.step = step + 1;
    state.tokens_seen += step_tokens;
    window_tokens += step_tokens;
    window_loss += r.loss;
    ++window_steps;
    if (rank0 && (state.step % tc.log_every == 0 || state.step == tc.steps)) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
      rate = static_cast<double>(window_tokens) / seconds;
      nlohmann::json row{{"step", state.step},
                         {"loss", window_loss / window_steps},
                         {"lr", r.lr},
                         {"grad_norm", r.grad_norm},
                         {"log_z", r.log_z},
                         {"max_attention_logit",
                          std::isnan(r.max_attention_logit) ? nlohmann::json() : nlohmann::json(r.max_attention_logit)},
                         {"tokens_per_s", rate},
                         {"tokens", state.tokens_seen}};
      if (dist != nullptr) {  // rank 0's time in collectives (waiting for the others included)
        row["comm_share"] = (comm_seconds() - window_comm) / seconds;
        window_comm = comm_seconds();
      }
      metrics->write(row);
      window_loss = 0;
      window_steps = 0;
      window_tokens = 0;
      window_start = std::chrono::steady_clock::now();
    }
    if (rank0) progress.update(state.step, fmt::format("loss {:.3f} | lr {:.2e} | {}", r.loss, r.lr, human_rate(rate)));
    const bool last = state.step == tc.steps;
    bool stopping = stop.requested() || (options.stop_after >= 0 && state.step - first_step >= options.stop_after);
    if (dist != nullptr) {  // a signal may reach some ranks only: all stop at the same step
      auto vote = torch::tensor({stopping ? 1.0 : 0.0}, torch::kDouble);
      dist->all_reduce_max(vote);
      stopping = vote.item<double>() != 0;
    }
    if (last || (tc.eval_every > 0 && state.step % tc.eval_every == 0)) validate();
    if (last || stopping || (tc.save_every > 0 && state.step % tc.save_every == 0)) save();
    if (stopping && !last) {
      progress.finish();
      logger().info("stopped at step {}; continue with: loom train --resume {}", state.step, result.checkpoint);
      result.interrupted = true;
      break;
    }
  }
  progress.finish();
  result.steps = state.step;
  result.valid_loss = state.valid_loss;
  if (data.task && !result.interrupted && rank0) {  // the task metric on the held-out test split
    result.test = evaluate_task(model, to_batches(data.task->split_batches("test", tc.batch_size)), bf16);
    result.majority_accuracy =
        data.task->task().n_classes() > 0 ? data.task->majority_baseline("test").second : std::nan("");
    metrics->write({{"step", state.step},
                    {"test_loss", result.test->loss},
                    {"test_exact_match", result.test->exact_match},
                    {"test_token_accuracy", result.test->token_accuracy}});
  }
  return result;
}

}  // namespace loom
