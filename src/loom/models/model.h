// The model every recipe builds: token embedding, position scheme, n_layers residual blocks,
// final norm, then a head chosen by model.arch:
//   decoder: a causal language model; output projection to the vocabulary (tied to the
//            embedding or not). GPT-2, LLaMA and the hybrids are recipes of it.
//   encoder: bidirectional layers and a classification head on a pooled state: a learned CLS
//            vector prepended to the sequence (pooling: cls, as BERT and ViT), or the mean over
//            non-padding tokens (pooling: mean).
//   encoder_decoder: n_layers bidirectional layers encode the source (enc_layers, norm_enc, its
//            own position module enc_pos); dec_layers causal layers with cross-attention decode the
//            target (layers, norm_f), output projection as a decoder's. One joint vocabulary;
//            the source embedding is tok_emb (share_embeddings) or src_emb. Sequence padding is
//            -1 in encode/decode inputs.
// Shapes: B batch, T tokens, V vocab_size, C n_classes.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "loom/nn/block.h"
#include "loom/nn/tensor_parallel.h"

namespace loom {

// Incremental-decoding state of a whole model: one LayerCache per layer.
struct KVCache {
  std::vector<LayerCache> layers;
  int64_t capacity = 0;
};

class ModelImpl : public BlockModule {
 public:
  explicit ModelImpl(ModelConfig config);

  // tokens: [B, T] int64 at positions offset..offset+T-1 -> logits [B, T, V]. With a cache,
  // keys/values of these positions are stored and earlier ones reused.
  torch::Tensor forward(const torch::Tensor& tokens, int64_t offset = 0, KVCache* cache = nullptr);
  // The hidden states before the output projection: [B, T, d_model].
  torch::Tensor hidden(const torch::Tensor& tokens, int64_t offset = 0, KVCache* cache = nullptr);
  torch::Tensor logits(const torch::Tensor& hidden);
  // Encoders: tokens [B, T], padding [B, T] bool (true at padding; may be undefined) -> [B, C].
  torch::Tensor classify(const torch::Tensor& tokens, const torch::Tensor& padding);
  // Encoder-decoders. encode: source [B, S] (-1 = padding) -> memory [B, S, d_model].
  // decode_hidden: target tokens [B, T] at positions offset.. (-1 = padding, embedded as 0:
  // their outputs are meaningless and must not be scored), the memory and its padding [B, S] bool
  // -> decoder hidden states [B, T, d_model]. With a cache, the memory's cross-attention keys and
  // values are computed on the first call and reused (later calls may pass an undefined memory).
  torch::Tensor encode(const torch::Tensor& source);
  torch::Tensor decode_hidden(const torch::Tensor& target, const torch::Tensor& memory,
                              const torch::Tensor& memory_padding, int64_t offset = 0, KVCache* cache = nullptr);
  // The output projection [V, d_model]: lm_head's weight, or tok_emb's when tied.
  torch::Tensor output_weight() { return lm_head ? lm_head->weight : tok_emb->weight; }

  KVCache make_cache(int64_t batch, int64_t capacity);
  // Sum of the layers' auxiliary losses from the last forward (MoE load balancing), or undefined.
  torch::Tensor aux_loss();
  // Have attention layers record their largest logit on the next forwards; then read the
  // maximum over layers (NaN when no layer recorded one).
  void track_attention_logits(bool on);
  double max_attention_logit();
  // GPT-2's init: N(0, init_std) for linear layers, embeddings and the parameters their blocks
  // declare kInitNormal; those declared kResidualOutput N(0, init_std / sqrt(2 n_layers)); biases
  // 0; everything else keeps its module's own initialization (norm weights 1, Mamba's A_log ...).
  void reset_parameters();
  // Whether a parameter gets weight decay: matrices (2-D or more) unless declared kNoDecay
  // (embeddings, learned positions, Mamba's A_log); norms, biases and other vectors never.
  bool is_decayed(const std::string& name, const torch::Tensor& p) const;
  // Whether a parameter is a linear weight that quantized checkpoints may store quantized: those
  // its block declares kQuantizable (attention and FFN projections) and an untied lm_head.
  bool is_quantizable(const std::string& name) const;
  // What every parameter's block declared about it (nn/module.h), by parameter name.
  const std::map<std::string, unsigned>& roles() const { return roles_; }
  // Tensor parallel (config().tp_size > 1): how each sliced parameter is cut, by name (the others
  // every rank holds whole), and the operations joining the ranks, which the model needs to run.
  const std::map<std::string, Shard>& shards() const { return shards_; }
  // Fused parameters (BlockModule::declare_fused: wqkv, a GLU's w_in), by name: the segments a
  // narrower model sliced out of this one takes the front of.
  const std::map<std::string, Shard>& fusions() const { return fusions_; }
  void set_tensor_parallel(TensorParallelOps* ops);
  TensorParallelOps* tensor_parallel() const { return tp_; }
  int64_t num_parameters();

  const ModelConfig& config() const { return config_; }

  torch::nn::Embedding tok_emb{nullptr};  // [V, d_model]
  std::shared_ptr<PositionImpl> pos;
  torch::nn::ModuleList layers;
  std::shared_ptr<NormImpl> norm_f;
  torch::nn::Linear lm_head{nullptr};         // [V, d_model]; decoders, null when tied to tok_emb
  torch::Tensor cls;                          // [d_model]; encoders with pooling cls
  torch::nn::Linear head{nullptr};            // [C, d_model] + bias; encoders
  torch::nn::ModuleList enc_layers{nullptr};  // encoder_decoder: the source encoder
  std::shared_ptr<NormImpl> norm_enc;
  std::shared_ptr<PositionImpl> enc_pos;
  torch::nn::Embedding src_emb{nullptr};  // encoder_decoder without share_embeddings

 private:
  // Embeds, runs the layers and the final norm: [B, T, d_model].
  torch::Tensor trunk(const torch::Tensor& x, int64_t offset, KVCache* cache, const torch::Tensor& padding);
  // Token embeddings, times sqrt(d_model) with model.embed_scale.
  torch::Tensor embed(torch::nn::Embedding& table, const torch::Tensor& tokens);
  void check_length(int64_t offset, int64_t t, const KVCache* cache) const;
  // Every residual layer: the encoder's, then the decoder's.
  std::vector<TransformerBlockImpl*> all_layers();

  ModelConfig config_;
  std::map<std::string, unsigned> roles_;
  std::map<std::string, Shard> shards_, fusions_;
  TensorParallelOps* tp_ = nullptr;
};
TORCH_MODULE(Model);

// Beam search and finished hypotheses: keeps (and reorders) the cache rows at `index` [B'] int64,
// in every state the mixers declared (nn/mixer.h's StateKind). cross false leaves kMemory states
// (the cross-attention keys and values) as they are: right
// when every row of `index` lies among the rows of the same source as the row it replaces (a
// beam reordered within its sentence, whose rows share one memory), and saves copying them.
// length >= 0: only the first `length` positions of kPerPosition states hold data (the decoded
// prefix); when the row count stays, just those are moved, in place (beam search's step).
void select_cache_rows(KVCache& cache, const torch::Tensor& index, bool cross = true, int64_t length = -1);
// Gives every kPerPosition state room for `capacity` positions (dimension 2), keeping the first
// `length`: a cache that grows with its sequence. kRecurrent and kMemory states are unchanged.
void grow_cache(KVCache& cache, int64_t capacity, int64_t length);

}  // namespace loom
