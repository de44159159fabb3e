// The architecture hyperparameters every block is built from. One vocabulary across loom:
// d_model, n_heads, n_kv_heads, head_dim, d_ff, n_layers, vocab_size, max_seq_len.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "loom/nn/attention/local_attention.h"
#include "loom/nn/ffn/moe.h"
#include "loom/nn/mixer/mamba.h"

namespace loom {

// What a model option means to the code that runs trained decoder language models (the fast
// inference engine, infer/fast_engine.h; the LLaMA file formats, convert/llama_format.h), declared
// as the last argument of the option's visit line:
//   kNoEffect:   changes nothing in a decoder's forward pass at inference (dropout, initialization,
//                options of encoders and encoder-decoders only);
//   kFastEngine: changes it, and the fast engine implements every value;
//   kBlockName:  names a block, whose registration says whether the fast engine runs it
//                (BlockInfo::runs_on_fast_engine).
// An option without one changes the forward pass and the fast engine implements its default value
// only: a new option is never silently ignored (the fast engine refuses the model and make_engine
// picks the reference engine). A block's own options (its options struct, registered with it)
// follow the block: they matter only when the model uses the block.
enum class AtInference { kNoEffect, kFastEngine, kBlockName };

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
  // Recipe key `head_dim`: the width of each attention head, 0 = d_model / n_heads (head_dim()).
  // Set, d_model need not divide by the heads, and layers with different head counts share it.
  int64_t fixed_head_dim = 0;
  // Per-layer feed-forward widths and attention heads (length n_layers), overriding d_ff and
  // n_heads layer by layer (for_layer); empty = every layer the same. Architecture search's
  // sub-models are such models.
  std::vector<int64_t> layer_d_ff, layer_heads;
  int64_t max_seq_len = 128;
  std::string mixer = "attention";  // token mixer of every layer, unless `layers` is given
  std::vector<std::string> layers;  // per-layer mixer names (length n_layers), e.g. [attention, attention]
  std::string position = "learned";
  std::string norm = "layernorm";
  std::string norm_placement = "pre";
  std::string ffn = "gelu";
  // The blocks' own options, each struct declared and registered with its block (visited in
  // this order, with qk_norm after the window, so --print-recipe keeps its order).
  LocalAttentionOptions local_attention;
  bool qk_norm = false;  // normalize queries and keys per head (model.norm) before RoPE
  MoeOptions moe;
  MambaOptions mamba;
  bool bias = true;
  bool tie_embeddings = true;
  bool share_embeddings = true;  // encoder_decoder: the source shares the target's embedding
  bool embed_scale = false;      // multiply token embeddings by sqrt(d_model) (Vaswani et al.)
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  double dropout = 0.0;
  double init_std = 0.02;
  std::string pooling = "cls";  // encoder only: "cls" (a CLS token's state) or "mean"
  int64_t n_classes = 0;        // encoder only: classes of the classification head
  // Tensor parallel (nn/tensor_parallel.h), set by the trainer, never in a recipe: blocks build
  // rank tp_rank's slice of tp_size.
  int64_t tp_size = 1, tp_rank = 0;

  template <class V>
  void visit(V& v) {
    constexpr auto fast = AtInference::kFastEngine, block = AtInference::kBlockName, none = AtInference::kNoEffect;
    v("arch", arch,
      "decoder (causal language model), encoder (bidirectional, classification head) or "
      "encoder_decoder (source encoder, target decoder with cross-attention)");
    v("vocab_size", vocab_size, "tokenizer vocabulary size (the tokenizer is trained to it)", fast);
    v("d_model", d_model, "width of the residual stream", fast);
    v("n_layers", n_layers, "number of layers (encoder_decoder: encoder layers)", fast);
    v("dec_layers", dec_layers, "encoder_decoder: decoder layers (0 = n_layers)", none);
    v("n_heads", n_heads, "attention heads (query heads)", fast);
    v("n_kv_heads", n_kv_heads, "key/value heads: 0 = n_heads (MHA), 1 = MQA, else GQA", fast);
    v("head_dim", fixed_head_dim, "width of each attention head: 0 = d_model / n_heads", fast);
    v("d_ff", d_ff, "hidden width of the feed-forward block", fast);
    v("layer_d_ff", layer_d_ff, "per-layer feed-forward widths, overriding d_ff; empty = n_layers x d_ff", fast);
    v("layer_heads", layer_heads, "per-layer attention heads, overriding n_heads (head_dim stays); empty = all n_heads",
      fast);
    v("max_seq_len", max_seq_len, "context length", fast);
    v("mixer", mixer, "token mixer of every layer (see `loom blocks`)", block);
    v("layers", layers, "per-layer token mixers, overriding `mixer`; empty = n_layers x mixer", block);
    v("position", position, "position scheme (see `loom blocks`)", block);
    v("norm", norm, "normalization (see `loom blocks`)", block);
    v("norm_placement", norm_placement, "where norms sit in a layer: pre, post, sandwich or normformer");
    v("ffn", ffn, "feed-forward block (see `loom blocks`)", block);
    local_attention.visit(v);
    v("qk_norm", qk_norm, "QK-norm: normalize each head's queries and keys with model.norm");
    moe.visit(v);
    mamba.visit(v);
    v("bias", bias, "biases in linear layers and norms", fast);
    v("tie_embeddings", tie_embeddings, "output projection shares the token embedding", fast);
    v("share_embeddings", share_embeddings, "encoder_decoder: source and target share one embedding (joint vocabulary)",
      none);
    v("embed_scale", embed_scale,
      "multiply token embeddings by sqrt(d_model), init N(0, d_model^-1/2) (Vaswani et al. 2017)", fast);
    v("norm_eps", norm_eps, "epsilon of the norms", fast);
    v("rope_theta", rope_theta, "RoPE base frequency", fast);
    v("dropout", dropout, "dropout on each residual branch during training", none);
    v("init_std", init_std, "std of the normal init (residual projections: / sqrt(2 n_layers))", none);
    v("pooling", pooling, "encoder: cls (the state of a leading CLS token) or mean (over non-padding tokens)", none);
    v("n_classes", n_classes, "encoder: classes of the classification head (0 for decoders)", none);
  }

  // Checks ranges, divisibility and every block name; `source` names the recipe in errors.
  void validate(const std::string& source) const;
  // The block names and their compatibility with this config's form (causal or bidirectional).
  void check_blocks(const std::string& source) const;
  // Whether the model can be cut into `t` tensor-parallel slices: a decoder whose heads, key/value
  // heads, d_ff and vocabulary divide by t, built of blocks that declare "tensor_parallel".
  void check_tensor_parallel(int64_t t, const std::string& source) const;

  bool causal() const { return arch != "encoder"; }
  bool encoder_decoder() const { return arch == "encoder_decoder"; }
  int64_t decoder_layers() const { return dec_layers > 0 ? dec_layers : n_layers; }
  // encoder_decoder: the configs its encoder (arch encoder) and decoder (arch decoder) layers are
  // built from.
  ModelConfig encoder_part() const;
  ModelConfig decoder_part() const;
  int64_t head_dim() const { return fixed_head_dim > 0 ? fixed_head_dim : d_model / n_heads; }
  // Whether layers differ in width or heads (layer_d_ff or layer_heads is given).
  bool per_layer_widths() const { return !layer_d_ff.empty() || !layer_heads.empty(); }
  // The config layer `layer`'s mixer and feed-forward block are built from: d_ff and n_heads of
  // that layer, head_dim fixed to the model's, no per-layer lists.
  ModelConfig for_layer(int64_t layer) const;
  int64_t kv_heads() const { return n_kv_heads == 0 ? n_heads : n_kv_heads; }
  std::vector<std::string> layer_mixers() const;
  // Every (family, name) of a block this model builds, each once: its layers' mixers, the position
  // scheme, the norm and the feed-forward block.
  std::vector<std::pair<std::string, std::string>> used_blocks() const;
};

// One option of a ModelConfig: its key, its value as YAML text and its AtInference declaration
// (none for an undeclared option), in visit order; `block`: the (family, name) of the block whose
// options struct holds it, if any.
struct OptionValue {
  std::string key, value;
  std::optional<AtInference> at_inference;
  std::optional<std::pair<std::string, std::string>> block;
};
std::vector<OptionValue> option_values(const ModelConfig& config);

}  // namespace loom
