// The architecture hyperparameters every block is built from. One vocabulary across loom:
// d_model, n_heads, n_kv_heads, head_dim, d_ff, n_layers, vocab_size, max_seq_len.
#pragma once
#include <string>
#include <vector>

namespace loom {

struct ModelConfig {
  // "decoder": causal LM; "encoder": bidirectional classifier; "encoder_decoder": a bidirectional
  // encoder of the source and a causal decoder with cross-attention (translation).
  std::string arch = "decoder";
  int64_t vocab_size = 4096;
  int64_t d_model = 256;
  int64_t n_layers = 4;
  int64_t dec_layers = 0;  // encoder_decoder: decoder layers (0 = n_layers)
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;  // 0 = n_heads (multi-head); 1 = multi-query; else grouped-query
  int64_t d_ff = 1024;
  int64_t max_seq_len = 128;
  std::string mixer = "attention";  // token mixer of every layer, unless `layers` is given
  std::vector<std::string> layers;  // per-layer mixer names (length n_layers), e.g. [attention, attention]
  std::string position = "learned";
  std::string norm = "layernorm";
  std::string norm_placement = "pre";
  std::string ffn = "gelu";
  int64_t window = 64;           // local_attention only: positions each query sees
  bool qk_norm = false;          // normalize queries and keys per head (model.norm) before RoPE
  int64_t n_experts = 8;         // moe only
  int64_t top_k = 2;             // moe only
  double capacity_factor = 1.25; // moe only; <= 0: no capacity limit
  double moe_aux_weight = 0.01;  // moe only
  int64_t d_state = 16;          // mamba only
  int64_t d_conv = 4;            // mamba only
  int64_t expand = 2;            // mamba only: d_inner = expand * d_model
  int64_t dt_rank = 0;           // mamba only; 0 = ceil(d_model / 16)
  bool bias = true;
  bool tie_embeddings = true;
  bool share_embeddings = true;  // encoder_decoder: the source shares the target's embedding
  bool embed_scale = false;      // multiply token embeddings by sqrt(d_model) (Vaswani et al.)
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  double dropout = 0.0;
  double init_std = 0.02;
  std::string pooling = "cls";     // encoder only: "cls" (a CLS token's state) or "mean"
  int64_t n_classes = 0;           // encoder only: classes of the classification head

  template <class V>
  void visit(V& v) {
    v("arch", arch, "decoder (causal language model), encoder (bidirectional, classification head) or "
                    "encoder_decoder (source encoder, target decoder with cross-attention)");
    v("vocab_size", vocab_size, "tokenizer vocabulary size (the tokenizer is trained to it)");
    v("d_model", d_model, "width of the residual stream");
    v("n_layers", n_layers, "number of layers (encoder_decoder: encoder layers)");
    v("dec_layers", dec_layers, "encoder_decoder: decoder layers (0 = n_layers)");
    v("n_heads", n_heads, "attention heads (query heads)");
    v("n_kv_heads", n_kv_heads, "key/value heads: 0 = n_heads (MHA), 1 = MQA, else GQA");
    v("d_ff", d_ff, "hidden width of the feed-forward block");
    v("max_seq_len", max_seq_len, "context length");
    v("mixer", mixer, "token mixer of every layer (see `loom blocks`)");
    v("layers", layers, "per-layer token mixers, overriding `mixer`; empty = n_layers x mixer");
    v("position", position, "position scheme (see `loom blocks`)");
    v("norm", norm, "normalization (see `loom blocks`)");
    v("norm_placement", norm_placement, "where norms sit in a layer: pre, post, sandwich or normformer");
    v("ffn", ffn, "feed-forward block (see `loom blocks`)");
    v("window", window, "sliding-window size of local_attention (the query's own position included)");
    v("qk_norm", qk_norm, "QK-norm: normalize each head's queries and keys with model.norm");
    v("n_experts", n_experts, "experts per MoE layer (ffn: moe)");
    v("top_k", top_k, "experts each token is routed to (ffn: moe)");
    v("capacity_factor", capacity_factor, "expert capacity = factor * tokens * top_k / n_experts; <= 0 = unlimited");
    v("moe_aux_weight", moe_aux_weight, "weight of the load-balancing loss (ffn: moe)");
    v("d_state", d_state, "Mamba state size per channel (mixer: mamba)");
    v("d_conv", d_conv, "Mamba causal convolution width (mixer: mamba)");
    v("expand", expand, "Mamba inner width = expand * d_model (mixer: mamba)");
    v("dt_rank", dt_rank, "Mamba rank of the step-size projection; 0 = ceil(d_model / 16)");
    v("bias", bias, "biases in linear layers and norms");
    v("tie_embeddings", tie_embeddings, "output projection shares the token embedding");
    v("share_embeddings", share_embeddings, "encoder_decoder: source and target share one embedding (joint vocabulary)");
    v("embed_scale", embed_scale, "multiply token embeddings by sqrt(d_model), init N(0, d_model^-1/2) (Vaswani et al. 2017)");
    v("norm_eps", norm_eps, "epsilon of the norms");
    v("rope_theta", rope_theta, "RoPE base frequency");
    v("dropout", dropout, "dropout on each residual branch during training");
    v("init_std", init_std, "std of the normal init (residual projections: / sqrt(2 n_layers))");
    v("pooling", pooling, "encoder: cls (the state of a leading CLS token) or mean (over non-padding tokens)");
    v("n_classes", n_classes, "encoder: classes of the classification head (0 for decoders)");
  }

  // Checks ranges, divisibility and every block name; `source` names the recipe in errors.
  void validate(const std::string& source) const;
  // The block names and their compatibility with this config's form (causal or bidirectional).
  void check_blocks(const std::string& source) const;

  bool causal() const { return arch != "encoder"; }
  bool encoder_decoder() const { return arch == "encoder_decoder"; }
  int64_t decoder_layers() const { return dec_layers > 0 ? dec_layers : n_layers; }
  // encoder_decoder: the configs its encoder (arch encoder) and decoder (arch decoder) layers are
  // built from.
  ModelConfig encoder_part() const;
  ModelConfig decoder_part() const;
  int64_t head_dim() const { return d_model / n_heads; }
  int64_t kv_heads() const { return n_kv_heads == 0 ? n_heads : n_kv_heads; }
  std::vector<std::string> layer_mixers() const;
};

}  // namespace loom
