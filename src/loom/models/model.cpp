#include "loom/models/model.h"

#include <cmath>

#include "loom/core/error.h"

namespace loom {

ModelImpl::ModelImpl(ModelConfig c) : config_(std::move(c)) {
  const auto& r = blocks();
  tok_emb = register_module("tok_emb", torch::nn::Embedding(config_.vocab_size, config_.d_model));
  pos = register_module("pos", r.positions.get(config_.position, "model.position")(config_));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.n_layers; ++i) layers->push_back(TransformerBlock(config_, i));
  norm_f = register_module("norm_f", r.norms.get(config_.norm, "model.norm")(config_, config_.d_model));
  if (!config_.causal()) {
    if (config_.pooling == "cls") cls = register_parameter("cls", torch::zeros({config_.d_model}));
    head = register_module("head", torch::nn::Linear(config_.d_model, config_.n_classes));
  } else if (!config_.tie_embeddings) {
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(config_.d_model, config_.vocab_size).bias(false)));
  }
  reset_parameters();
}

torch::Tensor ModelImpl::hidden(const torch::Tensor& tokens, int64_t offset, KVCache* cache) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T]");
  const int64_t t = tokens.size(1);
  if (offset + t > config_.max_seq_len)
    fail("sequence of {} tokens exceeds the model's context of {} tokens", offset + t,
         config_.max_seq_len);
  if (cache != nullptr && offset + t > cache->capacity)
    fail("sequence of {} tokens exceeds the KV cache capacity of {}", offset + t, cache->capacity);
  if (!config_.causal()) fail("an encoder (model.arch encoder) classifies whole sequences; it has no next-token hidden states");
  return trunk(tok_emb(tokens), offset, cache, {});
}

torch::Tensor ModelImpl::trunk(const torch::Tensor& embedded, int64_t offset, KVCache* cache,
                               const torch::Tensor& padding) {
  auto x = pos->embed(embedded, offset);  // [B, T, d_model]
  for (size_t i = 0; i < layers->size(); ++i) {
    MixerContext ctx{pos.get(), offset, cache ? &cache->layers[i] : nullptr, padding};
    x = layers[i]->as<TransformerBlockImpl>()->forward(x, ctx);
  }
  return norm_f->forward(x);
}

torch::Tensor ModelImpl::classify(const torch::Tensor& tokens, const torch::Tensor& padding) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T]");
  if (config_.causal()) fail("classify needs an encoder (model.arch encoder)");
  const int64_t b = tokens.size(0), t = tokens.size(1) + (cls.defined() ? 1 : 0);
  if (t > config_.max_seq_len)
    fail("sequence of {} tokens{} exceeds the model's context of {} tokens", t, cls.defined() ? " (CLS included)" : "",
         config_.max_seq_len);
  auto x = tok_emb(tokens);
  auto pad = padding.defined() ? padding : torch::zeros({b, tokens.size(1)}, torch::kBool);
  if (cls.defined()) {  // the CLS vector leads every sequence and is never padding
    x = torch::cat({cls.to(x.scalar_type()).view({1, 1, -1}).expand({b, 1, -1}), x}, 1);
    pad = torch::cat({torch::zeros({b, 1}, torch::kBool), pad}, 1);
  }
  auto h = trunk(x, 0, nullptr, padding.defined() ? pad : torch::Tensor());  // [B, T, d_model]
  torch::Tensor pooled;
  if (cls.defined()) {
    pooled = h.select(1, 0);
  } else {
    auto keep = pad.logical_not().unsqueeze(-1).to(h.scalar_type());         // [B, T, 1]
    pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1);
  }
  return head(pooled);  // [B, C]
}

torch::Tensor ModelImpl::logits(const torch::Tensor& h) {
  return torch::nn::functional::linear(h, output_weight());  // [B, T, V]
}

torch::Tensor ModelImpl::forward(const torch::Tensor& tokens, int64_t offset, KVCache* cache) {
  return logits(hidden(tokens, offset, cache));
}

KVCache ModelImpl::make_cache(int64_t batch, int64_t capacity) {
  KVCache cache;
  cache.capacity = std::min(capacity, config_.max_seq_len);
  auto options = tok_emb->weight.options();
  for (auto& layer : *layers)
    cache.layers.push_back(layer->as<TransformerBlockImpl>()->mixer->make_cache(batch, cache.capacity, options));
  return cache;
}

torch::Tensor ModelImpl::aux_loss() {
  torch::Tensor total;
  for (auto& layer : *layers) {
    auto aux = layer->as<TransformerBlockImpl>()->ffn->aux_loss();
    if (aux.defined()) total = total.defined() ? total + aux : aux;
  }
  return total;
}

void ModelImpl::track_attention_logits(bool on) {
  for (auto& layer : *layers) {
    auto& mixer = *layer->as<TransformerBlockImpl>()->mixer;
    mixer.track_logits = on;
    mixer.max_logit = torch::Tensor();  // a fresh maximum either way
  }
}

double ModelImpl::max_attention_logit() {
  double out = std::nan("");
  for (auto& layer : *layers) {
    const auto& m = layer->as<TransformerBlockImpl>()->mixer->max_logit;
    if (m.defined()) out = std::isnan(out) ? m.item<double>() : std::max(out, m.item<double>());
  }
  return out;
}

void ModelImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double std = config_.init_std, residual_std = std / std::sqrt(2.0 * config_.n_layers);
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  // Projections writing into the residual stream get the smaller std.
  auto is_residual = [&](const std::string& name) {
    return ends_with(name, ".wo") || ends_with(name, ".w_out") || ends_with(name, ".out_proj");
  };
  // Linear layers and embeddings: N(0, std), biases 0. Everything else (norms, Mamba's A_log,
  // D and dt bias, head scales) keeps the initialization its own module chose.
  for (auto& item : named_modules(/*name_prefix=*/"", /*include_self=*/false)) {  // called from the constructor
    if (auto* linear = item.value()->as<torch::nn::LinearImpl>()) {
      linear->weight.normal_(0.0, is_residual(item.key()) ? residual_std : std);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* embedding = item.value()->as<torch::nn::EmbeddingImpl>()) {
      embedding->weight.normal_(0.0, std);
    } else {
      // Learned positions and stacked MoE expert matrices are plain parameters of their module.
      for (auto& p : item.value()->named_parameters(/*recurse=*/false)) {
        if (item.key() == "pos" && p.key() == "weight") p.value().normal_(0.0, std);
        if (p.value().dim() == 3 && (p.key() == "w_in" || p.key() == "w_out"))
          p.value().normal_(0.0, p.key() == "w_out" ? residual_std : std);
      }
    }
  }
  if (cls.defined()) cls.normal_(0.0, std);
  for (auto& layer : *layers) layer->as<TransformerBlockImpl>()->mixer->reset_special_parameters();
}

bool ModelImpl::is_decayed(const std::string& name, const torch::Tensor& p) const {
  const bool embedding = name.rfind("tok_emb.", 0) == 0 || name.rfind("pos.", 0) == 0;
  // Mamba's A_log is a matrix of state decay rates, not a projection (no decay, as the reference).
  const bool ssm_rates = name.size() >= 6 && name.compare(name.size() - 6, 6, ".A_log") == 0;
  return p.dim() >= 2 && !embedding && !ssm_rates;
}

int64_t ModelImpl::num_parameters() {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace loom
