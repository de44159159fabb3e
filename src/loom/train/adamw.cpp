#include "loom/train/adamw.h"

#include <cmath>
#include <filesystem>
#include <map>

#include "loom/core/error.h"
#include "loom/core/shape.h"
#include "loom/io/safetensors.h"

namespace loom {

AdamW::AdamW(std::vector<AdamWGroup> groups, double beta1, double beta2, double eps)
    : beta1_(beta1), beta2_(beta2), eps_(eps) {
  for (auto& g : groups) {
    Group group{std::move(g.params), {}, {}, g.weight_decay};
    for (const auto& p : group.params) {
      group.exp_avg.push_back(torch::zeros_like(p.tensor));
      group.exp_avg_sq.push_back(torch::zeros_like(p.tensor));
    }
    groups_.push_back(std::move(group));
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double bias1 = 1.0 - std::pow(beta1_, static_cast<double>(step_));
  const double bias2 = 1.0 - std::pow(beta2_, static_cast<double>(step_));
  for (auto& group : groups_) {
    std::vector<torch::Tensor> params, grads, m, v;
    for (size_t i = 0; i < group.params.size(); ++i) {
      const auto& p = group.params[i].tensor;
      if (!p.grad().defined()) continue;
      params.push_back(p);
      grads.push_back(p.grad());
      m.push_back(group.exp_avg[i]);
      v.push_back(group.exp_avg_sq[i]);
    }
    if (params.empty()) continue;
    // p <- p * (1 - lr * wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    // p <- p - lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)
    if (group.weight_decay != 0.0) at::_foreach_mul_(params, 1.0 - lr * group.weight_decay);
    at::_foreach_mul_(m, beta1_);
    at::_foreach_add_(m, grads, 1.0 - beta1_);
    at::_foreach_mul_(v, beta2_);
    at::_foreach_addcmul_(v, grads, grads, 1.0 - beta2_);
    auto denom = at::_foreach_sqrt(v);
    at::_foreach_div_(denom, std::sqrt(bias2));
    at::_foreach_add_(denom, eps_);
    at::_foreach_addcdiv_(params, m, denom, -lr / bias1);
  }
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& group : groups_)
    for (size_t i = 0; i < group.params.size(); ++i) {
      out.emplace_back(group.params[i].name + ".exp_avg", group.exp_avg[i]);
      out.emplace_back(group.params[i].name + ".exp_avg_sq", group.exp_avg_sq[i]);
    }
  return out;
}

void AdamW::load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, int64_t step,
                       const std::string& source) {
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  torch::NoGradGuard no_grad;
  for (auto& group : groups_)
    for (size_t i = 0; i < group.params.size(); ++i)
      for (auto [suffix, target] :
           {std::pair{".exp_avg", &group.exp_avg[i]}, std::pair{".exp_avg_sq", &group.exp_avg_sq[i]}}) {
        const std::string name = group.params[i].name + suffix;
        auto it = by_name.find(name);
        if (it == by_name.end()) fail("{}: optimizer state lacks '{}'", source, name);
        if (it->second.sizes() != target->sizes())
          fail("{}: optimizer state '{}' has shape {} but the parameter has {}", source, name,
               shape_string(it->second.sizes()), shape_string(target->sizes()));
        target->copy_(it->second);
      }
  step_ = step;
}

double cosine_lr(int64_t step, int64_t steps, int64_t warmup_steps, double lr, double min_lr_ratio) {
  if (step < warmup_steps) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const double span = std::max<int64_t>(1, steps - warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / span);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine);
}

double inverse_sqrt_lr(int64_t step, int64_t warmup_steps, double lr) {
  const double s = static_cast<double>(step + 1), w = static_cast<double>(std::max<int64_t>(1, warmup_steps));
  return lr * std::min(s / w, std::sqrt(w / s));
}

void load_optimizer_state(const std::string& dir, AdamW& optimizer) {
  const std::string path = (std::filesystem::path(dir) / "optimizer.safetensors").string();
  auto file = load_safetensors(path);
  auto it = file.metadata.find("step");
  if (it == file.metadata.end()) fail("{}: optimizer state has no step", path);
  int64_t step = 0;
  try {
    step = std::stoll(it->second);
  } catch (const std::exception&) {
    fail("{}: optimizer step '{}' is not a number", path, it->second);
  }
  optimizer.load_state(file.tensors, step, path);
}

}  // namespace loom
