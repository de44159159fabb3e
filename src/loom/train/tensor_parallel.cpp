#include "loom/train/tensor_parallel.h"

#include "loom/core/error.h"

namespace loom {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Sums `x` over the group in fp32; returns a new tensor of x's dtype.
torch::Tensor summed(const torch::Tensor& x, Communicator& group) {
  auto wide = x.to(torch::kFloat).contiguous().clone();
  group.all_reduce_sum({wide});
  return wide.to(x.scalar_type());
}

Communicator& group_of(AutogradContext* ctx) {
  return *reinterpret_cast<Communicator*>(ctx->saved_data["group"].toInt());
}

// f: identity forward, the gradient summed backward.
struct Enter : torch::autograd::Function<Enter> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    return x.clone();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {summed(grad[0], group_of(ctx)), torch::Tensor()};
  }
};

// g: summed forward, identity backward.
struct Join : torch::autograd::Function<Join> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    return summed(x, group_of(ctx));
  }
  static variable_list backward(AutogradContext*, variable_list grad) { return {grad[0], torch::Tensor()}; }
};

// From this rank's slice of the logits [N, V/T] (fp32; the first of its vocabulary rows is
// `first`): [N, 2], per row the loss log Z - logit[target] (+ z_loss log Z^2) and log Z (which
// gets no gradient).
struct VocabParallelLoss : torch::autograd::Function<VocabParallelLoss> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& targets,
                               int64_t first, double z_loss, int64_t group_handle) {
    ctx->saved_data["group"] = group_handle;
    Communicator& group = group_of(ctx);
    torch::NoGradGuard no_grad;
    const int64_t rows = logits.size(1);
    auto top = std::get<0>(logits.max(-1)).contiguous();  // [N]
    auto global_top = top.clone();
    group.all_reduce_max(global_top);
    auto exps = (logits - global_top.unsqueeze(1)).exp();  // [N, V/T]
    auto normalizer = exps.sum(-1).contiguous();
    auto local = targets - first;
    auto inside = local.ge(0).logical_and(local.lt(rows));
    auto index = local.clamp(0, rows - 1).unsqueeze(1);
    auto target_logit = (logits.gather(1, index).squeeze(1) * inside.to(logits.scalar_type())).contiguous();
    group.all_reduce_sum({normalizer, target_logit});
    auto log_z = normalizer.log() + global_top;
    auto probs = exps / normalizer.unsqueeze(1);
    ctx->save_for_backward({probs, index, inside.to(torch::kFloat), log_z});
    ctx->saved_data["z_loss"] = z_loss;
    auto loss = log_z - target_logit;
    if (z_loss > 0) loss = loss + z_loss * log_z.pow(2);
    return torch::stack({loss, log_z}, 1);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const auto& probs = saved[0];
    const double z_loss = ctx->saved_data["z_loss"].toDouble();
    auto scale = z_loss > 0 ? 1 + 2 * z_loss * saved[3] : torch::ones_like(saved[3]);  // d/d log Z
    auto g = probs * scale.unsqueeze(1);
    g.scatter_add_(1, saved[1], -saved[2].unsqueeze(1));
    return {g * grad[0].select(1, 0).unsqueeze(1), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CommunicatorOps::enter(const torch::Tensor& x) { return Enter::apply(x, group_handle()); }
torch::Tensor CommunicatorOps::join(const torch::Tensor& x) { return Join::apply(x, group_handle()); }
void CommunicatorOps::sum(torch::Tensor& x) { group_.all_reduce_sum({x}); }
void CommunicatorOps::max(torch::Tensor& x) { group_.all_reduce_max(x); }

torch::Tensor vocab_parallel_cross_entropy(ModelImpl& model, const torch::Tensor& hidden, const torch::Tensor& targets,
                                           torch::ScalarType dtype, double z_loss, LossStats* stats) {
  auto* ops = dynamic_cast<CommunicatorOps*>(model.tensor_parallel());
  if (ops == nullptr) fail("vocab_parallel_cross_entropy needs a tensor-parallel model joined by a Communicator");
  const auto& weight = model.output_weight();  // [V/T, d_model]
  const int64_t first = model.config().tp_rank * weight.size(0);
  auto h = ops->enter(hidden.reshape({-1, hidden.size(-1)}));
  auto logits = torch::linear(h.to(dtype), weight.to(dtype)).to(torch::kFloat);  // [N, V/T]
  auto flat_targets = targets.reshape({-1});
  auto rows = VocabParallelLoss::apply(logits, flat_targets, first, z_loss, ops->group_handle());  // [N, 2]
  auto loss = rows.select(1, 0).mean();
  if (stats != nullptr) {
    torch::NoGradGuard no_grad;
    auto log_z = rows.select(1, 1);
    stats->log_z = log_z.mean().item<double>();
    stats->cross_entropy = (z_loss > 0 ? loss - z_loss * log_z.pow(2).mean() : loss).item<double>();
  }
  return loss;
}

torch::Tensor slice_parameter(const torch::Tensor& whole, const Shard& shard, int64_t rank, int64_t ranks) {
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  for (int64_t segment : shard.segments) {
    const int64_t part = segment / ranks;
    parts.push_back(whole.narrow(shard.dim, at + rank * part, part));
    at += segment;
  }
  if (at != whole.size(shard.dim))
    fail("a parameter of size {} along dimension {} is declared as segments summing to {}", whole.size(shard.dim),
         shard.dim, at);
  return torch::cat(parts, shard.dim).contiguous();
}

torch::Tensor join_parameter(const torch::Tensor& slice, const Shard& shard, Communicator& group) {
  const int64_t ranks = group.size(), rank = group.rank();
  std::vector<int64_t> sizes = slice.sizes().vec();
  int64_t whole_size = 0;
  for (int64_t segment : shard.segments) whole_size += segment;
  sizes[static_cast<size_t>(shard.dim)] = whole_size;
  auto whole = torch::zeros(sizes, slice.options());
  int64_t at = 0, local = 0;
  for (int64_t segment : shard.segments) {
    const int64_t part = segment / ranks;
    whole.narrow(shard.dim, at + rank * part, part).copy_(slice.narrow(shard.dim, local, part));
    at += segment;
    local += part;
  }
  group.all_reduce_sum({whole});
  return whole;
}

}  // namespace loom
