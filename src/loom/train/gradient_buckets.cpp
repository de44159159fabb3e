#include "loom/train/gradient_buckets.h"

#include <functional>

namespace loom {

struct GradientBuckets::State {
  struct Bucket {
    torch::Tensor flat;
    std::vector<size_t> members;  // parameter indices
    size_t filled = 0;
    std::function<void()> wait;  // set once started
  };
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;
    bool filled = false;
    bool had_gradient = false;
  };
  Communicator* dist = nullptr;
  std::vector<torch::Tensor> parameters;
  std::vector<Bucket> buckets;
  std::vector<Slot> slots;
  bool armed = false;
  size_t next = 0;  // the first bucket not started
  int64_t started_early = 0;

  torch::Tensor slot_view(size_t i) {
    const auto& p = parameters[i];
    return buckets[slots[i].bucket].flat.narrow(0, slots[i].offset, p.numel()).view(p.sizes());
  }

  // Starts buckets in index order for as long as the next one is full.
  void start_ready() {
    while (next < buckets.size() && buckets[next].filled == buckets[next].members.size()) {
      buckets[next].wait = dist->start_all_reduce_sum(buckets[next].flat);
      ++next;
    }
  }

  // The hook: `incoming` is about to be added to the parameter's gradient.
  void on_gradient(size_t i, const torch::Tensor& incoming) {
    if (!armed || slots[i].filled) return;
    torch::NoGradGuard no_grad;
    const auto& accumulated = parameters[i].grad();
    auto view = slot_view(i);
    if (accumulated.defined()) torch::add_out(view, accumulated, incoming);
    else view.copy_(incoming);
    slots[i].filled = slots[i].had_gradient = true;
    ++buckets[slots[i].bucket].filled;
    const size_t before = next;
    start_ready();
    started_early += static_cast<int64_t>(next - before);
  }
};

GradientBuckets::GradientBuckets(const std::vector<torch::Tensor>& parameters, Communicator& dist, int64_t bucket_bytes)
    : state_(std::make_shared<State>()), parameters_(parameters) {
  auto& s = *state_;
  s.dist = &dist;
  s.parameters = parameters;
  s.slots.resize(parameters.size());
  std::vector<int64_t> sizes;  // elements per bucket
  int64_t bytes = 0;
  for (size_t k = parameters.size(); k-- > 0;) {
    const auto& p = parameters[k];
    const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
    if (s.buckets.empty() || s.buckets.back().flat.scalar_type() != p.scalar_type() ||
        (bytes + size > bucket_bytes && bytes > 0)) {
      s.buckets.emplace_back();
      s.buckets.back().flat = torch::empty({0}, p.options());
      sizes.push_back(0);
      bytes = 0;
    }
    s.slots[k] = {s.buckets.size() - 1, sizes.back()};
    s.buckets.back().members.push_back(k);
    sizes.back() += p.numel();
    bytes += size;
  }
  for (size_t b = 0; b < s.buckets.size(); ++b)
    s.buckets[b].flat = torch::zeros({sizes[b]}, s.buckets[b].flat.options());
  for (size_t k = 0; k < parameters_.size(); ++k) {
    std::weak_ptr<State> weak = state_;
    hooks_.push_back(parameters_[k].register_hook([weak, k](const torch::Tensor& incoming) {
      if (auto state = weak.lock()) state->on_gradient(k, incoming);
    }));
  }
}

GradientBuckets::~GradientBuckets() {
  for (size_t k = 0; k < parameters_.size(); ++k) parameters_[k].remove_hook(hooks_[k]);
}

void GradientBuckets::arm() {
  auto& s = *state_;
  for (auto& slot : s.slots) slot.filled = slot.had_gradient = false;
  for (auto& bucket : s.buckets) bucket.filled = 0, bucket.wait = nullptr;
  s.next = 0;
  s.started_early = 0;
  s.armed = true;
}

std::vector<bool> GradientBuckets::finish() {
  auto& s = *state_;
  if (!s.armed) arm();  // this rank ran no backward in the step's last micro-batch
  s.armed = false;
  torch::NoGradGuard no_grad;
  // What backward did not bring: gradients of earlier micro-batches, or zeros.
  for (size_t b = s.next; b < s.buckets.size(); ++b) {
    for (size_t k : s.buckets[b].members) {
      auto& slot = s.slots[k];
      if (slot.filled) continue;
      const auto& grad = s.parameters[k].grad();
      slot.had_gradient = grad.defined();
      if (grad.defined()) s.slot_view(k).copy_(grad);
      else s.slot_view(k).zero_();
      slot.filled = true;
      ++s.buckets[b].filled;
    }
  }
  s.start_ready();
  std::vector<bool> had(s.parameters.size());
  for (auto& bucket : s.buckets) {
    bucket.wait();
    for (size_t k : bucket.members) s.parameters[k].mutable_grad() = s.slot_view(k);
  }
  for (size_t k = 0; k < s.parameters.size(); ++k) had[k] = s.slots[k].had_gradient;
  return had;
}

int64_t GradientBuckets::started_during_backward() const { return state_->started_early; }
int64_t GradientBuckets::count() const { return static_cast<int64_t>(state_->buckets.size()); }

}  // namespace loom
