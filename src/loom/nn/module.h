// The base of every block module (mixers, position schemes, norms, feed-forward blocks): what a
// block declares about its own parameters, so that code in other layers never guesses it from
// names. The model reads the declarations when it initializes (residual projections), the trainer
// when it groups parameters for weight decay, quantization when it picks the weights to quantize.
#pragma once
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace loom {

// Roles of a parameter, or-ed together (declared by name relative to the module: "wo.weight").
enum ParamRole : unsigned {
  // A plain parameter (not a Linear's or an Embedding's weight, which the model's initialization
  // always draws) drawn N(0, init_std) by the model: learned position tables, stacked expert
  // matrices. Undeclared plain parameters keep the module's own initialization.
  kInitNormal = 1u << 0,
  // Writes into the residual stream: initialized with std init_std / sqrt(2 * layers) (GPT-2).
  kResidualOutput = 1u << 1,
  // No weight decay although it is a matrix (embedding-like tables, Mamba's A_log). Vectors
  // (norms, biases, scales) never get weight decay.
  kNoDecay = 1u << 2,
  // A linear layer's weight [out, in] that quantized checkpoints store as int8 or Q4_0 blocks.
  kQuantizable = 1u << 3,
  // Tensor parallel (nn/tensor_parallel.h): a parameter every rank holds whole whose gradient on
  // each rank comes from the rank's slice only (per-head norms inside attention, the bias of a
  // projection whose slices are summed, added by rank 0): the gradients are summed over the ranks.
  kPartialGradient = 1u << 4,
};

// Tensor parallel: how a parameter of the whole model is cut into the T ranks' slices. Along
// `dim`, the parameter is the concatenation of `segments` (their sizes in the whole model; one
// segment: the whole dimension); rank r holds the r-th of T equal parts of every segment, in the
// same order. Attention's fused wqkv [(H + 2K) D, d]: dim 0, segments {H D, K D, K D}.
struct Shard {
  int64_t dim = 0;
  std::vector<int64_t> segments;
};

class BlockModule : public torch::nn::Module {
 public:
  // This module's own declarations (not its submodules'), by parameter name relative to it.
  const std::map<std::string, unsigned>& parameter_roles() const { return roles_; }
  const std::map<std::string, Shard>& parameter_shards() const { return shards_; }
  const std::map<std::string, Shard>& parameter_fusions() const { return fusions_; }

 protected:
  void declare(const std::string& parameter, unsigned roles) { roles_[parameter] |= roles; }
  void declare_shard(const std::string& parameter, Shard shard) { shards_[parameter] = std::move(shard); }
  // A fused parameter: along `fused.dim` it is the concatenation of `fused.segments` (attention's
  // wqkv {q, k, v}, a GLU's w_in {gate, up}), declared whatever the parallelism. A narrower model
  // sliced out of a wider one (architecture search's sub-models, search/supernet.h) takes the
  // front of each segment rather than the front of the whole dimension.
  void declare_fused(const std::string& parameter, Shard fused) { fusions_[parameter] = std::move(fused); }
  // A linear layer d_in -> d_out registered as `name`, its weight declared with `roles`.
  torch::nn::Linear register_linear(const std::string& name, int64_t d_in, int64_t d_out, bool bias,
                                    unsigned roles = 0) {
    auto linear = register_module(name, torch::nn::Linear(torch::nn::LinearOptions(d_in, d_out).bias(bias)));
    if (roles != 0) declare(name + ".weight", roles);
    return linear;
  }

 private:
  std::map<std::string, unsigned> roles_;
  std::map<std::string, Shard> shards_;
  std::map<std::string, Shard> fusions_;
};

// Every declaration in `root`'s module tree (its own and every submodule's), by full parameter
// name. Safe to call from root's constructor.
inline std::map<std::string, unsigned> collect_parameter_roles(const BlockModule& root) {
  std::map<std::string, unsigned> out = root.parameter_roles();
  for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    const auto* block = dynamic_cast<const BlockModule*>(item.value().get());
    if (block == nullptr) continue;
    for (const auto& [name, roles] : block->parameter_roles()) out[item.key() + "." + name] |= roles;
  }
  return out;
}

// Every shard declaration in `root`'s module tree (fused: every fused-parameter declaration), by
// full parameter name.
inline std::map<std::string, Shard> collect_parameter_shards(const BlockModule& root, bool fused = false) {
  auto own = [&](const BlockModule& m) -> const std::map<std::string, Shard>& {
    return fused ? m.parameter_fusions() : m.parameter_shards();
  };
  std::map<std::string, Shard> out = own(root);
  for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    const auto* block = dynamic_cast<const BlockModule*>(item.value().get());
    if (block == nullptr) continue;
    for (const auto& [name, shard] : own(*block)) out[item.key() + "." + name] = shard;
  }
  return out;
}

}  // namespace loom
