#include "loom/train/train_step.h"

#include "loom/core/compat.h"
#include "loom/train/linear_cross_entropy.h"

namespace loom {
namespace {

std::vector<AdamWGroup> parameter_groups(DecoderLMImpl& model, double weight_decay) {
  AdamWGroup decay{{}, weight_decay}, no_decay{{}, 0.0};
  for (auto& item : model.named_parameters()) {
    auto& group = model.is_decayed(item.key(), item.value()) ? decay : no_decay;
    group.params.push_back({item.key(), item.value()});
  }
  return {decay, no_decay};
}

}  // namespace

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat),
                                              targets.reshape({-1}));
}

TrainStep::TrainStep(DecoderLM model, TrainConfig config)
    : model_(std::move(model)),
      config_(std::move(config)),
      parameters_(model_->parameters()),
      optimizer_(parameter_groups(*model_, config_.weight_decay), config_.beta1, config_.beta2,
                 config_.eps) {}

StepResult TrainStep::run(int64_t step, const std::function<Batch(int64_t micro)>& batch, bool track_stats) {
  model_->train();
  model_->track_attention_logits(track_stats);
  StepResult result;
  result.lr = cosine_lr(step, config_.steps, config_.warmup_steps, config_.lr, config_.min_lr_ratio);
  compat::zero_grad_to_none(parameters_);
  for (int64_t micro = 0; micro < config_.grad_accum; ++micro) {
    auto [inputs, targets] = batch(micro);
    torch::Tensor loss;
    LossStats stats;
    {
      const bool bf16 = config_.precision == "bf16";
      compat::CpuAutocast autocast(bf16);
      // Fused head + loss instead of lm_loss(model_->forward(inputs), targets): same math, no
      // [N, V] fp32 tensors: bf16 step 1.12x, fp32 1.03x faster (train_throughput, 2 threads).
      loss = linear_cross_entropy(model_->hidden(inputs), model_->output_weight(), targets,
                                  bf16 ? torch::kBFloat16 : torch::kFloat, config_.z_loss, &stats);
    }
    // Auxiliary losses of the last forward (MoE load balancing) join the objective, not the
    // reported language-modelling loss.
    auto objective = loss;
    if (auto aux = model_->aux_loss(); aux.defined()) objective = loss + model_->config().moe_aux_weight * aux;
    (objective / static_cast<double>(config_.grad_accum)).backward();
    result.loss += stats.cross_entropy / static_cast<double>(config_.grad_accum);
    result.log_z += stats.log_z / static_cast<double>(config_.grad_accum);
  }
  const double max_norm = config_.grad_clip > 0 ? config_.grad_clip : std::numeric_limits<double>::infinity();
  result.grad_norm = torch::nn::utils::clip_grad_norm_(parameters_, max_norm);
  optimizer_.step(result.lr);
  if (track_stats) {
    result.max_attention_logit = model_->max_attention_logit();
    model_->track_attention_logits(false);
  }
  return result;
}

double evaluate_loss(DecoderLM& model, const std::vector<Batch>& batches, bool bf16) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  double total = 0;
  int64_t tokens = 0;
  for (const auto& [inputs, targets] : batches) {
    compat::CpuAutocast autocast(bf16);
    total += linear_cross_entropy(model->hidden(inputs), model->output_weight(), targets,
                                  bf16 ? torch::kBFloat16 : torch::kFloat).item<double>() *
             targets.numel();
    tokens += targets.numel();
  }
  model->train(was_training);
  return tokens > 0 ? total / static_cast<double>(tokens) : std::nan("");
}

}  // namespace loom
