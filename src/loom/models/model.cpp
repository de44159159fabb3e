#include "loom/models/model.h"

#include <cmath>

#include "loom/core/error.h"

namespace loom {

ModelImpl::ModelImpl(ModelConfig c) : config_(std::move(c)) {
  const auto& r = blocks();
  // Tensor parallel: this rank's rows of the vocabulary (nn/tensor_parallel.h).
  const int64_t vocab = config_.vocab_size / config_.tp_size;
  tok_emb = register_module("tok_emb", torch::nn::Embedding(vocab, config_.d_model));
  pos = register_module("pos", r.positions.get(config_.position, "model.position")(config_));
  layers = register_module("layers", torch::nn::ModuleList());
  if (config_.encoder_decoder()) {
    const ModelConfig enc = config_.encoder_part(), dec = config_.decoder_part();
    for (int64_t i = 0; i < dec.n_layers; ++i) layers->push_back(TransformerBlock(dec, i, /*cross_attention=*/true));
    enc_layers = register_module("enc_layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < enc.n_layers; ++i) enc_layers->push_back(TransformerBlock(enc, i));
    norm_enc = register_module("norm_enc", r.norms.get(config_.norm, "model.norm")(config_, config_.d_model));
    enc_pos = register_module("enc_pos", r.positions.get(config_.position, "model.position")(enc));
    if (!config_.share_embeddings)
      src_emb = register_module("src_emb", torch::nn::Embedding(config_.vocab_size, config_.d_model));
  } else {
    for (int64_t i = 0; i < config_.n_layers; ++i) layers->push_back(TransformerBlock(config_, i));
  }
  norm_f = register_module("norm_f", r.norms.get(config_.norm, "model.norm")(config_, config_.d_model));
  if (!config_.causal()) {
    if (config_.pooling == "cls") cls = register_parameter("cls", torch::zeros({config_.d_model}));
    head = register_module("head", torch::nn::Linear(config_.d_model, config_.n_classes));
  } else if (!config_.tie_embeddings) {
    lm_head = register_linear("lm_head", config_.d_model, vocab, /*bias=*/false, kQuantizable);
  }
  declare("tok_emb.weight", kNoDecay);
  if (src_emb) declare("src_emb.weight", kNoDecay);
  if (config_.tp_size > 1) {
    declare_shard("tok_emb.weight", {0, {config_.vocab_size}});
    if (lm_head) declare_shard("lm_head.weight", {0, {config_.vocab_size}});
  }
  roles_ = collect_parameter_roles(*this);
  shards_ = collect_parameter_shards(*this);
  fusions_ = collect_parameter_shards(*this, /*fused=*/true);
  reset_parameters();
}

void ModelImpl::check_length(int64_t offset, int64_t t, const KVCache* cache) const {
  if (offset + t > config_.max_seq_len)
    fail("sequence of {} tokens exceeds the model's context of {} tokens", offset + t, config_.max_seq_len);
  if (cache != nullptr && offset + t > cache->capacity)
    fail("sequence of {} tokens exceeds the KV cache capacity of {}", offset + t, cache->capacity);
}

void ModelImpl::set_tensor_parallel(TensorParallelOps* ops) {
  if (config_.tp_size == 1) fail("set_tensor_parallel: the model was built whole (tp_size 1)");
  tp_ = ops;
  for (auto* layer : all_layers()) layer->set_tensor_parallel(ops);
}

torch::Tensor ModelImpl::embed(torch::nn::Embedding& table, const torch::Tensor& tokens) {
  torch::Tensor x;
  if (config_.tp_size > 1) {  // this rank's rows of the vocabulary; the others' tokens give 0
    if (tp_ == nullptr) fail("a tensor-parallel slice of a model runs only with its ranks (set_tensor_parallel)");
    const int64_t rows = table->weight.size(0), first = config_.tp_rank * rows;
    auto local = tokens - first;
    auto inside = local.ge(0).logical_and(local.lt(rows)).unsqueeze(-1);
    x = tp_->join(table(local.clamp(0, rows - 1)) * inside.to(table->weight.scalar_type()));
  } else {
    x = table(tokens);
  }
  return config_.embed_scale ? x * std::sqrt(static_cast<double>(config_.d_model)) : x;
}

torch::Tensor ModelImpl::hidden(const torch::Tensor& tokens, int64_t offset, KVCache* cache) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T]");
  check_length(offset, tokens.size(1), cache);
  if (!config_.causal())
    fail("an encoder (model.arch encoder) classifies whole sequences; it has no next-token hidden states");
  if (config_.encoder_decoder()) fail("an encoder-decoder decodes from a source: use encode and decode_hidden");
  return trunk(embed(tok_emb, tokens), offset, cache, {});
}

torch::Tensor ModelImpl::encode(const torch::Tensor& source) {
  TORCH_CHECK(source.dim() == 2, "source must be [B, S]");
  if (!config_.encoder_decoder()) fail("encode needs model.arch encoder_decoder");
  check_length(0, source.size(1), nullptr);
  auto padding = source.lt(0);
  auto x = enc_pos->embed(embed(src_emb ? src_emb : tok_emb, source.clamp_min(0)), 0);
  const bool padded = padding.any().item<bool>();
  for (auto& layer : *enc_layers) {
    MixerContext ctx{enc_pos.get(), 0, nullptr, padded ? padding : torch::Tensor()};
    x = layer->as<TransformerBlockImpl>()->forward(x, ctx);
  }
  return norm_enc->forward(x);
}

torch::Tensor ModelImpl::decode_hidden(const torch::Tensor& target, const torch::Tensor& memory,
                                       const torch::Tensor& memory_padding, int64_t offset, KVCache* cache) {
  TORCH_CHECK(target.dim() == 2, "target must be [B, T]");
  if (!config_.encoder_decoder()) fail("decode_hidden needs model.arch encoder_decoder");
  check_length(offset, target.size(1), cache);
  auto x = pos->embed(embed(tok_emb, target.clamp_min(0)), offset);
  for (size_t i = 0; i < layers->size(); ++i) {
    MixerContext ctx{pos.get(), offset, nullptr, {}, memory, memory_padding};
    x = layers[i]->as<TransformerBlockImpl>()->forward(x, ctx, cache ? &cache->layers[i] : nullptr);
  }
  return norm_f->forward(x);
}

torch::Tensor ModelImpl::trunk(const torch::Tensor& embedded, int64_t offset, KVCache* cache,
                               const torch::Tensor& padding) {
  auto x = pos->embed(embedded, offset);  // [B, T, d_model]
  for (size_t i = 0; i < layers->size(); ++i) {
    MixerContext ctx{pos.get(), offset, nullptr, padding};
    x = layers[i]->as<TransformerBlockImpl>()->forward(x, ctx, cache ? &cache->layers[i] : nullptr);
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
  auto x = embed(tok_emb, tokens);
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
    auto keep = pad.logical_not().unsqueeze(-1).to(h.scalar_type());  // [B, T, 1]
    pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1);
  }
  return head(pooled);  // [B, C]
}

torch::Tensor ModelImpl::logits(const torch::Tensor& h) {
  if (config_.tp_size > 1)
    fail("a tensor-parallel slice of a model has a slice of the logits: train/tensor_parallel.h's loss joins them");
  return torch::nn::functional::linear(h, output_weight());  // [B, T, V]
}

torch::Tensor ModelImpl::forward(const torch::Tensor& tokens, int64_t offset, KVCache* cache) {
  return logits(hidden(tokens, offset, cache));
}

KVCache ModelImpl::make_cache(int64_t batch, int64_t capacity) {
  KVCache cache;
  cache.capacity = std::min(capacity, config_.max_seq_len);
  auto options = tok_emb->weight.options();
  for (auto& layer : *layers) {
    auto* block = layer->as<TransformerBlockImpl>();
    LayerCache state{block->mixer->make_cache(batch, cache.capacity, options), {}};
    if (block->cross) state.cross = block->cross->make_cache(batch, cache.capacity, options);
    cache.layers.push_back(std::move(state));
  }
  return cache;
}

void select_cache_rows(KVCache& cache, const torch::Tensor& index, bool cross, int64_t length) {
  for (auto& layer : cache.layers) {
    for (auto* state : {&layer.mixer, &layer.cross}) {
      for (size_t i = 0; i < state->tensors.size(); ++i) {
        torch::Tensor& t = state->tensors[i];
        if (!t.defined()) continue;
        switch (state->kinds[i]) {
          case StateKind::kMemory:
            if (cross) t = t.index_select(0, index);
            break;
          case StateKind::kPerPosition:
            if (length >= 0 && index.size(0) == t.size(0)) {  // same rows: move only the filled positions, in place
              auto filled = t.narrow(2, 0, length);
              filled.copy_(filled.index_select(0, index));
              break;
            }
            t = t.index_select(0, index);
            break;
          case StateKind::kRecurrent: t = t.index_select(0, index); break;
        }
      }
    }
  }
}

void grow_cache(KVCache& cache, int64_t capacity, int64_t length) {
  if (capacity <= cache.capacity) return;
  for (auto& layer : cache.layers)
    for (auto* state : {&layer.mixer, &layer.cross})
      for (size_t i = 0; i < state->tensors.size(); ++i) {
        auto& t = state->tensors[i];
        if (state->kinds[i] != StateKind::kPerPosition || !t.defined()) continue;
        auto sizes = t.sizes().vec();
        sizes[2] = capacity;
        auto grown = torch::zeros(sizes, t.options());
        if (length > 0) grown.narrow(2, 0, length).copy_(t.narrow(2, 0, length));
        t = grown;
      }
  cache.capacity = capacity;
}

std::vector<TransformerBlockImpl*> ModelImpl::all_layers() {
  std::vector<TransformerBlockImpl*> out;
  if (enc_layers)
    for (auto& layer : *enc_layers) out.push_back(layer->as<TransformerBlockImpl>());
  for (auto& layer : *layers) out.push_back(layer->as<TransformerBlockImpl>());
  return out;
}

torch::Tensor ModelImpl::aux_loss() {
  torch::Tensor total;
  for (auto* layer : all_layers()) {
    auto aux = layer->ffn->aux_loss();
    if (aux.defined()) total = total.defined() ? total + aux : aux;
  }
  return total;
}

void ModelImpl::track_attention_logits(bool on) {
  for (auto* layer : all_layers()) {
    for (auto* mixer : {layer->mixer.get(), layer->cross.get()}) {
      if (mixer == nullptr) continue;
      mixer->track_logits = on;
      mixer->max_logit = torch::Tensor();  // a fresh maximum either way
    }
  }
}

double ModelImpl::max_attention_logit() {
  double out = std::nan("");
  for (auto* layer : all_layers()) {
    for (auto* mixer : {layer->mixer.get(), layer->cross.get()}) {
      if (mixer == nullptr || !mixer->max_logit.defined()) continue;
      const double m = mixer->max_logit.item<double>();
      out = std::isnan(out) ? m : std::max(out, m);
    }
  }
  return out;
}

void ModelImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double std = config_.init_std;
  // 1 / sqrt(2 x the depth of the stack the projection writes into): an encoder-decoder's decoder
  // layers count dec_layers, everything else n_layers.
  auto residual_std = [&](const std::string& name) {
    const bool decoder = config_.encoder_decoder() && name.rfind("layers.", 0) == 0;
    return std / std::sqrt(2.0 * static_cast<double>(decoder ? config_.decoder_layers() : config_.n_layers));
  };
  auto role = [&](const std::string& name) {
    auto it = roles_.find(name);
    return it == roles_.end() ? 0u : it->second;
  };
  auto std_of = [&](const std::string& name) { return (role(name) & kResidualOutput) ? residual_std(name) : std; };
  // Linear layers and embeddings: N(0, std), biases 0; plain parameters declared kInitNormal too.
  // Everything else (norms, Mamba's A_log, D and dt bias, head scales) keeps the initialization
  // its own module chose.
  for (auto& item : named_modules(/*name_prefix=*/"", /*include_self=*/false)) {  // called from the constructor
    if (auto* linear = item.value()->as<torch::nn::LinearImpl>()) {
      linear->weight.normal_(0.0, std_of(item.key() + ".weight"));
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* embedding = item.value()->as<torch::nn::EmbeddingImpl>()) {
      // Scaled embeddings start at unit variance after the sqrt(d_model) factor (fairseq).
      embedding->weight.normal_(0.0, config_.embed_scale ? 1.0 / std::sqrt(static_cast<double>(config_.d_model)) : std);
    } else {
      for (auto& p : item.value()->named_parameters(/*recurse=*/false)) {
        const std::string name = item.key() + "." + p.key();
        if (role(name) & kInitNormal) p.value().normal_(0.0, std_of(name));
      }
    }
  }
  if (cls.defined()) cls.normal_(0.0, std);
  for (auto* layer : all_layers()) layer->mixer->reset_special_parameters();
}

bool ModelImpl::is_decayed(const std::string& name, const torch::Tensor& p) const {
  auto it = roles_.find(name);
  return p.dim() >= 2 && (it == roles_.end() || !(it->second & kNoDecay));
}

bool ModelImpl::is_quantizable(const std::string& name) const {
  auto it = roles_.find(name);
  return it != roles_.end() && (it->second & kQuantizable);
}

int64_t ModelImpl::num_parameters() {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace loom
