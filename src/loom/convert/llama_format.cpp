#include "loom/convert/llama_format.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "loom/data/spm_model.h"
#include "loom/data/tokenizer.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/io/safetensors.h"

namespace loom {
namespace fs = std::filesystem;
namespace {

// The options the LLaMA files carry (GGUF llama.* keys, HF config.json): any value converts. Every
// other option that changes a decoder at inference must equal llama_layout()'s.
const std::set<std::string> kCarriedOptions{"vocab_size", "d_model",     "n_layers", "n_heads",    "n_kv_heads",
                                            "d_ff",       "max_seq_len", "norm_eps", "rope_theta", "tie_embeddings"};

// A LLaMA decoder's weights with the fused loom projections split, [out, in] as nn.Linear
// stores them; q and k rows in one RoPE pairing (split_model: the one asked for; imports: the
// file's own).
struct LlamaLayer {
  torch::Tensor attn_norm, q, k, v, o, ffn_norm, gate, up, down;
};
struct LlamaWeights {
  torch::Tensor embed;  // [V, d]
  std::vector<LlamaLayer> layers;
  torch::Tensor norm;    // [d]
  torch::Tensor output;  // [V, d]; undefined when tied
};

// Each head's D rows: rotate-half order (i, i + D/2 paired) -> adjacent order (2i, 2i+1 paired),
// as convert_hf_to_gguf.py's permute: row 2i + j <- row j * D/2 + i.
torch::Tensor half_to_adjacent(const torch::Tensor& w, int64_t heads) {
  const int64_t d = w.size(0) / heads;
  return w.reshape({heads, 2, d / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}
// The inverse: row j * D/2 + i <- row 2i + j.
torch::Tensor adjacent_to_half(const torch::Tensor& w, int64_t heads) {
  const int64_t d = w.size(0) / heads;
  return w.reshape({heads, d / 2, 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

std::string layer_name(int64_t i, const char* rest) { return fmt::format("layers.{}.{}", i, rest); }

// Splits loom tensors into LLaMA tensors by rows, with q/k in the pairing asked for: fp32 copies
// of a model's state (every loom tensor must be used), or (partial) any row-major tensors such as
// the raw Q4_0 block rows of a quantized checkpoint [rows, cols / 32 * 18] bytes, where a tensor
// that is missing stays undefined.
LlamaWeights split_state(const ModelConfig& c, const std::map<std::string, torch::Tensor>& state, bool want_adjacent,
                         bool partial) {
  std::set<std::string> used;
  auto take = [&](const std::string& name) {
    auto it = state.find(name);
    if (it == state.end()) {
      if (partial) return torch::Tensor();
      fail("the model has no tensor '{}'", name);
    }
    used.insert(name);
    return it->second;
  };
  const int64_t h = c.n_heads, kv = c.kv_heads(), d = c.head_dim();
  const bool adjacent = c.position == "rope_adjacent";
  auto pair = [&](const torch::Tensor& w, int64_t heads) {
    if (adjacent == want_adjacent) return w.clone();
    return want_adjacent ? half_to_adjacent(w, heads) : adjacent_to_half(w, heads);
  };
  LlamaWeights out;
  out.embed = take("tok_emb.weight");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LlamaLayer l;
    l.attn_norm = take(layer_name(i, "norm1.weight"));
    if (const auto wqkv = take(layer_name(i, "mixer.wqkv.weight")); wqkv.defined()) {
      const auto qkv = wqkv.split_with_sizes({h * d, kv * d, kv * d}, 0);
      l.q = pair(qkv[0], h);
      l.k = pair(qkv[1], kv);
      l.v = qkv[2].contiguous();
    }
    l.o = take(layer_name(i, "mixer.wo.weight"));
    l.ffn_norm = take(layer_name(i, "norm2.weight"));
    if (const auto w_in = take(layer_name(i, "ffn.w_in.weight")); w_in.defined()) {
      const auto gate_up = w_in.chunk(2, 0);
      l.gate = gate_up[0].contiguous();
      l.up = gate_up[1].contiguous();
    }
    l.down = take(layer_name(i, "ffn.w_out.weight"));
    out.layers.push_back(l);
  }
  out.norm = take("norm_f.weight");
  if (!c.tie_embeddings) out.output = take("lm_head.weight");
  if (!partial)
    for (const auto& [name, t] : state)
      if (!used.count(name)) fail("tensor '{}' has no place in a LLaMA model", name);
  return out;
}

LlamaWeights split_model(Model& model, bool want_adjacent) {
  std::map<std::string, torch::Tensor> state;
  for (auto& [name, t] : module_state(*model)) state[name] = t.detach().to(torch::kFloat).contiguous();
  return split_state(model->config(), state, want_adjacent, /*partial=*/false);
}

// A loom model of `config` holding `w` (q/k rows already in the config's pairing); shapes checked.
NamedTensors join_model(const ModelConfig& config, const LlamaWeights& w, const std::string& source) {
  NamedTensors file;
  file.emplace_back("tok_emb.weight", w.embed);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LlamaLayer& l = w.layers[i];
    const auto n = static_cast<int64_t>(i);
    file.emplace_back(layer_name(n, "norm1.weight"), l.attn_norm);
    file.emplace_back(layer_name(n, "mixer.wqkv.weight"), torch::cat({l.q, l.k, l.v}, 0));
    file.emplace_back(layer_name(n, "mixer.wo.weight"), l.o);
    file.emplace_back(layer_name(n, "norm2.weight"), l.ffn_norm);
    file.emplace_back(layer_name(n, "ffn.w_in.weight"), torch::cat({l.gate, l.up}, 0));
    file.emplace_back(layer_name(n, "ffn.w_out.weight"), l.down);
  }
  file.emplace_back("norm_f.weight", w.norm);
  if (w.output.defined()) file.emplace_back("lm_head.weight", w.output);
  Model model(config);
  Safetensors st;
  st.tensors = file;
  load_module_state(*model, st, source);  // names and shapes must match the config exactly
  return module_state(*model);
}

// Writes a loom checkpoint directory from imported weights and tokenizer files.
// `quantization` (non-empty): the checkpoint stores some weights quantized (quant/quantize.h).
std::string write_checkpoint(const std::string& out_dir, const ModelConfig& config, const NamedTensors& weights,
                             const std::map<std::string, std::string>& files, const std::string& source,
                             const std::string& quantization = "") {
  Recipe recipe = default_recipe();
  recipe.model = config;
  recipe.task = TaskConfig{};
  recipe.validate("import of " + source);
  const fs::path out(out_dir);
  CheckpointWriter writer(out.has_parent_path() ? out.parent_path().string() : ".", out.filename().string());
  std::map<std::string, std::string> metadata{
      {"format", "loom-" + std::to_string(kCheckpointFormat)}, {"step", "0"}, {"imported_from", source}};
  if (!quantization.empty()) metadata["quantization"] = quantization;
  save_safetensors(writer.path("model.safetensors"), weights, metadata);
  writer.add("recipe.yaml", recipe_to_yaml(recipe));
  for (const auto& [name, bytes] : files) writer.add(name, bytes);
  nlohmann::json j{
      {"format", kCheckpointFormat}, {"step", 0}, {"tokens_seen", 0}, {"elapsed_seconds", 0.0}, {"valid_loss", nullptr},
      {"imported_from", source}};
  writer.add("trainer.json", j.dump(2) + "\n");
  return writer.commit();
}

torch::Tensor from_floats(std::vector<float> data, const std::vector<int64_t>& shape) {
  return torch::from_blob(data.data(), shape, torch::kFloat).clone();
}

// ---- GGUF ----

uint32_t file_type_of(GgmlType t) {  // llama_ftype: ALL_F32 0, MOSTLY_F16 1, Q4_0 2, Q4_1 3, Q8_0 7, BF16 32
  switch (t) {
    case GgmlType::kF32: return 0;
    case GgmlType::kF16: return 1;
    case GgmlType::kQ4_0: return 2;
    case GgmlType::kQ4_1: return 3;
    case GgmlType::kQ8_0: return 7;
    case GgmlType::kBF16: return 32;
    default:
      fail("loom does not export GGUF tensors of type {} (f32, f16, bf16, q8_0, q4_0, q4_1)", ggml_type_info(t).name);
  }
}

// `raw`, when defined: the tensor's Q4_0 block rows as stored by `loom quantize`, written as they
// are when the file's type is Q4_0 (GPTQ's blocks would not survive re-rounding the dequantized
// weights: its codes are not the nearest ones on the grid).
void add_gguf_tensor(GgufWriter& writer, const std::string& name, const torch::Tensor& t, GgmlType type,
                     const torch::Tensor& raw = {}) {
  const auto x = t.to(torch::kFloat).contiguous();
  GgmlType chosen = type;
  if (x.dim() < 2) chosen = GgmlType::kF32;  // llama.cpp keeps 1-D tensors (norms) in F32
  else if (x.size(-1) % ggml_type_info(type).block_size != 0) chosen = GgmlType::kF16;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  if (raw.defined() && chosen == GgmlType::kQ4_0) {
    const auto bytes = raw.contiguous();
    if (bytes.numel() != static_cast<int64_t>(ggml_nbytes(chosen, x.numel())))
      fail("internal: stored Q4_0 blocks of {} have {} bytes for {} weights", name, bytes.numel(), x.numel());
    writer.add_tensor(name, shape, chosen,
                      std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), bytes.numel()));
    return;
  }
  writer.add_tensor(name, shape, chosen, ggml_quantize(chosen, x.data_ptr<float>(), x.numel()));
}

std::vector<std::string> strings_of(const GgufFile& f, const std::string& key) {
  const GgufValue& v = f.get(key);
  if (!v.is_array() || v.element_type != GgufType::kString) fail("{}: {} is not an array of strings", f.path, key);
  return v.strings;
}

int64_t int_or(const GgufFile& f, const std::string& key, int64_t fallback) {
  const GgufValue* v = f.find(key);
  return v ? v->as_int(key) : fallback;
}

nlohmann::json to_json(const GgufValue& v) {
  const GgufType t = v.value_type();
  auto element = [&](size_t i) -> nlohmann::json {
    if (t == GgufType::kString) return v.strings[i];
    if (t == GgufType::kF32 || t == GgufType::kF64) return v.floats[i];
    if (t == GgufType::kBool) return v.ints[i] != 0;
    if (t == GgufType::kU64) return static_cast<uint64_t>(v.ints[i]);
    return v.ints[i];
  };
  if (!v.is_array()) return element(0);
  nlohmann::json a = nlohmann::json::array();
  for (size_t i = 0; i < v.size(); ++i) a.push_back(element(i));
  return a;
}

// A SentencePiece model from a GGUF `llama` vocabulary (tokens, scores, token types, special ids).
std::string spm_from_gguf(const GgufFile& f) {
  SpmVocab vocab;
  const auto tokens = strings_of(f, "tokenizer.ggml.tokens");
  const GgufValue* scores = f.find("tokenizer.ggml.scores");
  const GgufValue* types = f.find("tokenizer.ggml.token_type");
  if (scores && scores->size() != tokens.size())
    fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", f.path, scores->size(), tokens.size());
  if (types && types->size() != tokens.size())
    fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", f.path, types->size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    SpmPiece p;
    p.piece = tokens[i];
    if (scores) p.score = static_cast<float>(scores->floats.empty() ? scores->ints[i] : scores->floats[i]);
    if (types) {
      const int64_t type = types->ints.at(i);
      if (type < 1 || type > 6) fail("{}: token {} has token_type {} (1 to 6 expected)", f.path, i, type);
      p.type = static_cast<SpmPieceType>(type);
    }
    if (p.type == SpmPieceType::kByte) vocab.byte_fallback = true;
    vocab.pieces.push_back(std::move(p));
  }
  vocab.model_type = 2;  // BPE, as LLaMA's tokenizer
  vocab.unk_id = static_cast<int>(int_or(f, "tokenizer.ggml.unknown_token_id", 0));
  vocab.bos_id = static_cast<int>(int_or(f, "tokenizer.ggml.bos_token_id", 1));
  vocab.eos_id = static_cast<int>(int_or(f, "tokenizer.ggml.eos_token_id", 2));
  vocab.pad_id = static_cast<int>(int_or(f, "tokenizer.ggml.padding_token_id", -1));
  if (const GgufValue* v = f.find("tokenizer.ggml.add_space_prefix"))
    vocab.add_dummy_prefix = v->as_int("add_space_prefix");
  vocab.remove_extra_whitespaces = false;
  vocab.normalizer_name = "identity";
  return build_spm_model(vocab);
}

ImportSummary import_gguf(const std::string& path, const std::string& out_dir) {
  const GgufFile f = read_gguf(path);
  const std::string arch = f.get("general.architecture").as_string("general.architecture");
  if (arch != "llama") fail("{}: general.architecture is '{}'; loom imports 'llama' only", path, arch);
  auto u = [&](const std::string& key) { return f.get("llama." + key).as_int("llama." + key); };
  ModelConfig c = llama_layout("rope_adjacent");  // llama.cpp rotates adjacent pairs
  c.d_model = u("embedding_length");
  c.n_layers = u("block_count");
  c.n_heads = u("attention.head_count");
  c.n_kv_heads = f.find("llama.attention.head_count_kv") ? u("attention.head_count_kv") : c.n_heads;
  c.d_ff = u("feed_forward_length");
  c.max_seq_len = u("context_length");
  c.norm_eps = f.get("llama.attention.layer_norm_rms_epsilon").as_float("llama.attention.layer_norm_rms_epsilon");
  // Stored as f32: round to the nearest short decimal (9.99999974738e-06 -> 1e-05) so recipes read well.
  c.norm_eps = std::stod(fmt::format("{:.6g}", c.norm_eps));
  c.rope_theta =
      f.find("llama.rope.freq_base") ? f.get("llama.rope.freq_base").as_float("llama.rope.freq_base") : 10000.0;
  if (c.n_heads <= 0 || c.d_model % c.n_heads != 0)
    fail("{}: embedding_length {} is not a multiple of head_count {}", path, c.d_model, c.n_heads);
  const int64_t head_dim = c.d_model / c.n_heads;
  if (f.find("llama.rope.dimension_count") && u("rope.dimension_count") != head_dim)
    fail("{}: llama.rope.dimension_count {} differs from the head size {}: partial RoPE is not supported", path,
         u("rope.dimension_count"), head_dim);
  for (const char* key : {"llama.attention.key_length", "llama.attention.value_length"})
    if (f.find(key) && f.get(key).as_int(key) != head_dim)
      fail("{}: {} {} differs from embedding_length / head_count = {}: not supported", path, key,
           f.get(key).as_int(key), head_dim);
  if (const GgufValue* s = f.find("llama.rope.scaling.type"); s && s->as_string("llama.rope.scaling.type") != "none")
    fail("{}: RoPE scaling '{}' is not supported", path, s->as_string("llama.rope.scaling.type"));
  if (f.find("llama.expert_count") && u("expert_count") > 0)
    fail("{}: mixture-of-experts llama models are not supported", path);

  std::map<std::string, const GgufTensorInfo*> by_name;
  for (const auto& t : f.tensors) by_name[t.name] = &t;
  std::set<std::string> used;
  auto take = [&](const std::string& name) {
    auto it = by_name.find(name);
    if (it == by_name.end()) fail("{}: GGUF has no tensor '{}'", path, name);
    used.insert(name);
    return from_floats(f.dequantize(*it->second), it->second->shape);
  };
  LlamaWeights w;
  w.embed = take("token_embd.weight");
  c.vocab_size = w.embed.size(0);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    auto blk = [&](const char* name) { return take(fmt::format("blk.{}.{}.weight", i, name)); };
    w.layers.push_back({blk("attn_norm"), blk("attn_q"), blk("attn_k"), blk("attn_v"), blk("attn_output"),
                        blk("ffn_norm"), blk("ffn_gate"), blk("ffn_up"), blk("ffn_down")});
  }
  w.norm = take("output_norm.weight");
  c.tie_embeddings = !by_name.count("output.weight");
  if (!c.tie_embeddings) w.output = take("output.weight");
  for (const auto& t : f.tensors)
    if (!used.count(t.name)) fail("{}: unexpected tensor '{}' (loom imports plain llama models)", path, t.name);

  ImportSummary summary;
  summary.source = "gguf";
  summary.config = c;
  std::map<std::string, std::string> files;
  const GgufValue* model = f.find("tokenizer.ggml.model");
  if (!model) {
    summary.tokenizer = "none";
  } else if (model->as_string("tokenizer.ggml.model") == "llama") {
    files["tokenizer.model"] = spm_from_gguf(f);
    try {  // SentencePiece itself validates the rebuilt model now rather than at the first load
      Tokenizer::from_bytes(files["tokenizer.model"]);
    } catch (const Error& e) {
      fail("{}: the tokenizer.ggml.* vocabulary does not make a SentencePiece model: {}", path, e.what());
    }
    summary.tokenizer = "sentencepiece";
  } else {
    nlohmann::json j = nlohmann::json::object();
    const std::string prefix = "tokenizer.ggml.";
    for (const auto& [key, value] : f.metadata) {
      if (key.rfind(prefix, 0) == 0) j[key.substr(prefix.size())] = to_json(value);
      else if (key == "tokenizer.chat_template") j["chat_template"] = to_json(value);
    }
    try {
      files[kGgufVocabFile] = j.dump(1) + "\n";
    } catch (const nlohmann::json::exception& e) {
      fail("{}: the tokenizer vocabulary cannot be written as JSON ({})", path, e.what());
    }
    summary.tokenizer = fmt::format("{} ({})", kGgufVocabFile, model->as_string("tokenizer.ggml.model"));
  }
  if (files.count("tokenizer.model")) {
    const auto tokens = strings_of(f, "tokenizer.ggml.tokens");
    if (static_cast<int64_t>(tokens.size()) != c.vocab_size)
      fail("{}: {} tokens in the vocabulary but token_embd has {} rows", path, tokens.size(), c.vocab_size);
  }
  c.validate(path);
  // Linear weights whose every part is Q4_0 in the file keep its blocks (the checkpoint is then a
  // "q4" one, run by the fast engine's Q4_0 kernels and exported back unchanged); the Model gets
  // the same values dequantized. Parts concatenate by rows: q, k, v -> wqkv (in the file's RoPE
  // pairing, which the import keeps), gate, up -> w_in.
  auto blocks = [&](const std::vector<std::string>& parts, int64_t cols) -> torch::Tensor {
    std::vector<torch::Tensor> rows;
    for (const auto& part : parts) {
      const GgufTensorInfo& t = *by_name.at(part);
      if (t.type != GgmlType::kQ4_0 || t.shape.size() != 2 || t.shape[1] != cols) return {};
      rows.push_back(torch::from_blob(const_cast<char*>(f.data(t)), {static_cast<int64_t>(t.nbytes)}, torch::kUInt8)
                         .view({t.shape[0], -1}));
    }
    return torch::cat(rows, 0);
  };
  std::map<std::string, QuantizedLinear> kept;
  auto keep = [&](const std::string& name, const std::vector<std::string>& parts, int64_t cols) {
    if (auto q = blocks(parts, cols); q.defined())
      kept[name] = QuantizedLinear{QuantFormat::kQ4_0, q.size(0), cols, q.contiguous(), {}};
  };
  for (int64_t i = 0; i < c.n_layers; ++i) {
    auto blk = [&](const char* name) { return fmt::format("blk.{}.{}.weight", i, name); };
    keep(layer_name(i, "mixer.wqkv.weight"), {blk("attn_q"), blk("attn_k"), blk("attn_v")}, c.d_model);
    keep(layer_name(i, "mixer.wo.weight"), {blk("attn_output")}, c.d_model);
    keep(layer_name(i, "ffn.w_in.weight"), {blk("ffn_gate"), blk("ffn_up")}, c.d_model);
    keep(layer_name(i, "ffn.w_out.weight"), {blk("ffn_down")}, c.d_ff);
  }
  // The output projection: output.weight, or a tied token_embd (as `loom quantize` does).
  if (c.tie_embeddings) keep("tok_emb.weight", {"token_embd.weight"}, c.d_model);
  else keep("lm_head.weight", {"output.weight"}, c.d_model);
  NamedTensors tensors;
  for (auto& [name, t] : join_model(c, w, path)) {
    if (auto it = kept.find(name); it != kept.end()) append_quantized(tensors, name, it->second);
    else tensors.emplace_back(name, t);
  }
  summary.q4_0_weights = static_cast<int64_t>(kept.size());
  summary.dir = write_checkpoint(out_dir, c, tensors, files, path, kept.empty() ? "" : "q4");
  return summary;
}

// ---- Hugging Face ----

template <class T>
T json_or(const nlohmann::json& j, const char* key, T fallback) {
  return j.contains(key) && !j[key].is_null() ? j[key].get<T>() : fallback;
}

ImportSummary import_hf(const std::string& dir, const std::string& out_dir) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", config_path, e.what());
  }
  ModelConfig c = llama_layout("rope");  // HF LLaMA rotates halves
  // Integer fields are checked first: JSON's conversion of a float out of range (1e30 layers) is
  // undefined behaviour.
  auto integer = [&](const char* key) {
    const auto& v = j.at(key);
    if (!v.is_number_integer()) fail("{}: {} must be an integer, got {}", config_path, key, v.dump());
    return v.get<int64_t>();
  };
  auto integer_or = [&](const char* key, int64_t fallback) {
    return j.contains(key) && !j[key].is_null() ? integer(key) : fallback;
  };
  try {
    const std::string type = json_or<std::string>(j, "model_type", "");
    if (type != "llama") fail("{}: model_type is '{}'; loom imports 'llama' only", config_path, type);
    c.vocab_size = integer("vocab_size");
    c.d_model = integer("hidden_size");
    c.n_layers = integer("num_hidden_layers");
    c.n_heads = integer("num_attention_heads");
    c.n_kv_heads = integer_or("num_key_value_heads", c.n_heads);
    c.d_ff = integer("intermediate_size");
    c.max_seq_len = integer_or("max_position_embeddings", 2048);
    c.norm_eps = json_or<double>(j, "rms_norm_eps", 1e-6);
    c.rope_theta = json_or<double>(j, "rope_theta", 10000.0);
    c.tie_embeddings = json_or<bool>(j, "tie_word_embeddings", false);
    if (json_or<std::string>(j, "hidden_act", "silu") != "silu")
      fail("{}: hidden_act '{}' is not supported (silu only)", config_path, j["hidden_act"].get<std::string>());
    if (json_or<bool>(j, "attention_bias", false) || json_or<bool>(j, "mlp_bias", false))
      fail("{}: biases (attention_bias, mlp_bias) are not supported", config_path);
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
      fail("{}: rope_scaling {} is not supported", config_path, j["rope_scaling"].dump());
    if (c.n_heads > 0 && integer_or("head_dim", c.d_model / c.n_heads) != c.d_model / c.n_heads)
      fail("{}: head_dim {} differs from hidden_size / num_attention_heads: not supported", config_path,
           integer("head_dim"));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", config_path, e.what());
  }
  c.validate(config_path);

  // The weights: one file, or the shards an index lists.
  std::vector<std::string> files;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::set<std::string> shards;
    try {
      const auto j = nlohmann::json::parse(read_file(index.string()));  // kept alive for items()
      for (const auto& [name, file] : j.at("weight_map").items()) shards.insert(file.get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      fail("{}: {}", index.string(), e.what());
    }
    for (const auto& s : shards) files.push_back((fs::path(dir) / s).string());
  } else {
    files.push_back((fs::path(dir) / "model.safetensors").string());
  }
  std::map<std::string, torch::Tensor> state;
  for (const auto& file : files)
    for (auto& [name, t] : load_safetensors(file).tensors) state[name] = t.to(torch::kFloat);
  std::set<std::string> used;
  auto take = [&](const std::string& name) {
    auto it = state.find(name);
    if (it == state.end()) fail("{}: no tensor '{}' in {}", dir, name, fmt::join(files, ", "));
    used.insert(name);
    return it->second;
  };
  LlamaWeights w;
  w.embed = take("model.embed_tokens.weight");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    auto layer = [&](const char* name) { return take(fmt::format("model.layers.{}.{}.weight", i, name)); };
    w.layers.push_back({layer("input_layernorm"), layer("self_attn.q_proj"), layer("self_attn.k_proj"),
                        layer("self_attn.v_proj"), layer("self_attn.o_proj"), layer("post_attention_layernorm"),
                        layer("mlp.gate_proj"), layer("mlp.up_proj"), layer("mlp.down_proj")});
  }
  w.norm = take("model.norm.weight");
  if (!c.tie_embeddings) w.output = take("lm_head.weight");
  else if (state.count("lm_head.weight")) used.insert("lm_head.weight");  // a saved copy of the tied weight
  for (const auto& [name, t] : state) {
    const bool rotary_buffer = name.size() > 9 && name.compare(name.size() - 9, 9, ".inv_freq") == 0;
    if (!used.count(name) && !rotary_buffer)
      fail("{}: unexpected tensor '{}' (loom imports plain LLaMA models)", dir, name);
  }

  ImportSummary summary;
  summary.source = "hf";
  summary.config = c;
  std::map<std::string, std::string> tokenizer_files;
  const fs::path spm = fs::path(dir) / "tokenizer.model";
  if (fs::exists(spm)) {
    tokenizer_files["tokenizer.model"] = read_file(spm.string());
    summary.tokenizer = "sentencepiece";
  } else {
    summary.tokenizer = "none";
  }
  summary.dir = write_checkpoint(out_dir, c, join_model(c, w, dir), tokenizer_files, dir);
  return summary;
}

// tokenizer.ggml.* for a SentencePiece vocabulary (tokenizer.ggml.model "llama").
void add_spm_vocab(GgufWriter& g, const SpmVocab& vocab, int64_t vocab_size, const std::string& dir) {
  if (static_cast<int64_t>(vocab.pieces.size()) != vocab_size)
    fail("{}: the tokenizer has {} pieces but the model's vocab_size is {}", dir, vocab.pieces.size(), vocab_size);
  std::vector<std::string> tokens;
  std::vector<double> scores;
  std::vector<int64_t> types;
  for (const auto& p : vocab.pieces) {
    tokens.push_back(p.piece);
    scores.push_back(p.score);
    types.push_back(static_cast<int64_t>(p.type));
  }
  auto u32 = [](int64_t v) { return GgufValue::u32(static_cast<uint32_t>(v)); };
  g.add("tokenizer.ggml.model", GgufValue::string("llama"));
  g.add("tokenizer.ggml.tokens", GgufValue::string_array(std::move(tokens)));
  g.add("tokenizer.ggml.scores", GgufValue::float_array(GgufType::kF32, std::move(scores)));
  g.add("tokenizer.ggml.token_type", GgufValue::int_array(GgufType::kI32, std::move(types)));
  if (vocab.bos_id >= 0) g.add("tokenizer.ggml.bos_token_id", u32(vocab.bos_id));
  if (vocab.eos_id >= 0) g.add("tokenizer.ggml.eos_token_id", u32(vocab.eos_id));
  if (vocab.unk_id >= 0) g.add("tokenizer.ggml.unknown_token_id", u32(vocab.unk_id));
  if (vocab.pad_id >= 0) g.add("tokenizer.ggml.padding_token_id", u32(vocab.pad_id));
  g.add("tokenizer.ggml.add_space_prefix", GgufValue::boolean(vocab.add_dummy_prefix));
  // loom trains on paragraphs each ended by eos, never with bos (`loom generate` starts from eos).
  g.add("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
  g.add("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
}

void add_foreign_keys(GgufWriter& g, const nlohmann::json& j, const std::string& path);

// tokenizer.ggml.* back from the kForeignVocabFile an import wrote, with llama.cpp's value types:
// strings and bools as such, integers u32 (token ids), integer arrays i32 (token_type), float
// arrays f32 (scores), string arrays (tokens, merges); "chat_template" -> tokenizer.chat_template.
void add_foreign_vocab(GgufWriter& g, const std::string& path, int64_t vocab_size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", path, e.what());
  }
  if (!j.is_object() || !j.contains("tokens") || !j["tokens"].is_array()) fail("{}: no \"tokens\" array", path);
  if (static_cast<int64_t>(j["tokens"].size()) != vocab_size)
    fail("{}: {} tokens but the model's vocab_size is {}", path, j["tokens"].size(), vocab_size);
  try {
    add_foreign_keys(g, j, path);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", path, e.what());
  }
}

void add_foreign_keys(GgufWriter& g, const nlohmann::json& j, const std::string& path) {
  for (const auto& [key, v] : j.items()) {
    const std::string name = key == "chat_template" ? "tokenizer.chat_template" : "tokenizer.ggml." + key;
    if (v.is_string()) g.add(name, GgufValue::string(v.get<std::string>()));
    else if (v.is_boolean()) g.add(name, GgufValue::boolean(v.get<bool>()));
    else if (v.is_number_integer()) g.add(name, GgufValue::u32(static_cast<uint32_t>(v.get<int64_t>())));
    else if (v.is_number()) g.add(name, GgufValue::f32(v.get<float>()));
    else if (v.is_array() && (v.empty() || v[0].is_string()))
      g.add(name, GgufValue::string_array(v.get<std::vector<std::string>>()));
    else if (v.is_array() && v[0].is_number_integer())
      g.add(name, GgufValue::int_array(GgufType::kI32, v.get<std::vector<int64_t>>()));
    else if (v.is_array() && v[0].is_number())
      g.add(name, GgufValue::float_array(GgufType::kF32, v.get<std::vector<double>>()));
    else fail("{}: key '{}' is not a string, number, bool or flat array", path, key);
  }
}

}  // namespace

ModelConfig llama_layout(const std::string& position) {
  ModelConfig c;
  c.arch = "decoder";
  c.mixer = "attention";
  c.position = position;
  c.norm = "rmsnorm";
  c.norm_placement = "pre";
  c.ffn = "swiglu";
  c.bias = false;
  return c;
}

void check_llama_style(const ModelConfig& c, const std::string& what) {
  // Compared option by option with the layout (nn/config.h's option_values): what the files carry
  // converts at any value, options without effect at inference are ignored, blocks must be the
  // layout's (either RoPE pairing), the options of blocks the model does not use do not matter.
  const ModelConfig layout = llama_layout(c.position == "rope_adjacent" ? "rope_adjacent" : "rope");
  std::vector<std::string> problems;
  const auto used = c.used_blocks(), layout_blocks = layout.used_blocks();
  for (const auto& [family, name] : used) {
    const auto& wanted = layout_blocks;
    const auto it = std::find_if(wanted.begin(), wanted.end(), [&](const auto& b) { return b.first == family; });
    if (it->second != name)
      problems.push_back(family == "position" ? fmt::format("position {} (rope or rope_adjacent needed)", name)
                                              : fmt::format("{} {} ({} needed)", family, name, it->second));
  }
  const auto options = option_values(c), wanted = option_values(layout);
  for (size_t i = 0; i < options.size(); ++i) {
    const OptionValue& o = options[i];
    if (kCarriedOptions.count(o.key) || o.at_inference == AtInference::kNoEffect ||
        o.at_inference == AtInference::kBlockName || o.value == wanted[i].value)
      continue;
    if (o.block && std::find(used.begin(), used.end(), *o.block) == used.end()) continue;
    problems.push_back(fmt::format("{} {} ({} needed)", o.key, o.value, wanted[i].value));
  }
  if (!problems.empty()) fail("{}: not a LLaMA-style model: {}", what, fmt::join(problems, ", "));
}

void export_gguf(LoadedModel& loaded, GgmlType type, const std::string& path, const std::string& name) {
  const ModelConfig& c = loaded.recipe.model;
  check_llama_style(c, loaded.dir);
  // The vocabulary: the SentencePiece tokenizer, or the foreign GGUF vocabulary an import kept.
  const std::string foreign = (fs::path(loaded.dir) / kForeignVocabFile).string();
  // (A "gpt2" one loads as a byte-level BPE Tokenizer, whose file is that same JSON.)
  const bool has_foreign =
      fs::exists(foreign) && (!loaded.has_tokenizer || loaded.tokenizer.file_name() == std::string(kForeignVocabFile));
  if (!has_foreign) require_tokenizer(loaded, "GGUF export");
  const uint32_t file_type = file_type_of(type);
  torch::NoGradGuard no_grad;
  const LlamaWeights w = split_model(loaded.model, /*want_adjacent=*/true);
  // A Q4_0 export of a Q4_0 checkpoint (q4 or gptq) copies the stored blocks, split and permuted
  // by rows like the float weights.
  std::map<std::string, torch::Tensor> blocks;
  if (type == GgmlType::kQ4_0)
    for (const auto& [tensor, q] : loaded.quantized)
      if (q.format == QuantFormat::kQ4_0) blocks[tensor] = q.q.reshape({q.rows, -1});
  const LlamaWeights raw = split_state(c, blocks, /*want_adjacent=*/true, /*partial=*/true);

  GgufWriter g;
  auto u32 = [](int64_t v) { return GgufValue::u32(static_cast<uint32_t>(v)); };
  g.add("general.architecture", GgufValue::string("llama"));
  g.add("general.name", GgufValue::string(name));
  g.add("general.file_type", u32(file_type));
  if (type != GgmlType::kF32 && type != GgmlType::kF16 && type != GgmlType::kBF16)
    g.add("general.quantization_version", u32(2));
  g.add("llama.context_length", u32(c.max_seq_len));
  g.add("llama.embedding_length", u32(c.d_model));
  g.add("llama.block_count", u32(c.n_layers));
  g.add("llama.feed_forward_length", u32(c.d_ff));
  g.add("llama.attention.head_count", u32(c.n_heads));
  g.add("llama.attention.head_count_kv", u32(c.kv_heads()));
  g.add("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(static_cast<float>(c.norm_eps)));
  g.add("llama.rope.dimension_count", u32(c.head_dim()));
  g.add("llama.rope.freq_base", GgufValue::f32(static_cast<float>(c.rope_theta)));
  g.add("llama.vocab_size", u32(c.vocab_size));
  if (has_foreign) add_foreign_vocab(g, foreign, c.vocab_size);
  else add_spm_vocab(g, parse_spm_model(loaded.tokenizer.serialized()), c.vocab_size, loaded.dir);

  add_gguf_tensor(g, "token_embd.weight", w.embed, type, raw.embed);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LlamaLayer& l = w.layers[i];
    const LlamaLayer& r = raw.layers[i];
    auto blk = [&](const char* n) { return fmt::format("blk.{}.{}.weight", i, n); };
    add_gguf_tensor(g, blk("attn_norm"), l.attn_norm, type);
    add_gguf_tensor(g, blk("attn_q"), l.q, type, r.q);
    add_gguf_tensor(g, blk("attn_k"), l.k, type, r.k);
    add_gguf_tensor(g, blk("attn_v"), l.v, type, r.v);
    add_gguf_tensor(g, blk("attn_output"), l.o, type, r.o);
    add_gguf_tensor(g, blk("ffn_norm"), l.ffn_norm, type);
    add_gguf_tensor(g, blk("ffn_gate"), l.gate, type, r.gate);
    add_gguf_tensor(g, blk("ffn_up"), l.up, type, r.up);
    add_gguf_tensor(g, blk("ffn_down"), l.down, type, r.down);
  }
  add_gguf_tensor(g, "output_norm.weight", w.norm, type);
  if (w.output.defined()) add_gguf_tensor(g, "output.weight", w.output, type, raw.output);
  g.write(path);
}

void export_hf(LoadedModel& loaded, const std::string& out_dir, GgmlType dtype) {
  const ModelConfig& c = loaded.recipe.model;
  check_llama_style(c, loaded.dir);
  require_tokenizer(loaded, "Hugging Face export");
  if (loaded.tokenizer.file_name() == std::string(kForeignVocabFile))
    fail(
        "{}: Hugging Face export needs a SentencePiece tokenizer, but this checkpoint's vocabulary is {} "
        "(a GGUF byte-level BPE)",
        loaded.dir, kForeignVocabFile);
  torch::ScalarType st;
  std::string torch_dtype;
  switch (dtype) {
    case GgmlType::kF32: st = torch::kFloat, torch_dtype = "float32"; break;
    case GgmlType::kF16: st = torch::kHalf, torch_dtype = "float16"; break;
    case GgmlType::kBF16: st = torch::kBFloat16, torch_dtype = "bfloat16"; break;
    default: fail("Hugging Face export writes f32, f16 or bf16, not {}", ggml_type_info(dtype).name);
  }
  torch::NoGradGuard no_grad;
  const LlamaWeights w = split_model(loaded.model, /*want_adjacent=*/false);
  NamedTensors tensors;
  auto add = [&](const std::string& name, const torch::Tensor& t) { tensors.emplace_back(name, t.to(st)); };
  add("model.embed_tokens.weight", w.embed);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LlamaLayer& l = w.layers[i];
    auto n = [&](const char* rest) { return fmt::format("model.layers.{}.{}.weight", i, rest); };
    add(n("input_layernorm"), l.attn_norm);
    add(n("self_attn.q_proj"), l.q);
    add(n("self_attn.k_proj"), l.k);
    add(n("self_attn.v_proj"), l.v);
    add(n("self_attn.o_proj"), l.o);
    add(n("post_attention_layernorm"), l.ffn_norm);
    add(n("mlp.gate_proj"), l.gate);
    add(n("mlp.up_proj"), l.up);
    add(n("mlp.down_proj"), l.down);
  }
  add("model.norm.weight", w.norm);
  if (w.output.defined()) add("lm_head.weight", w.output);

  const int bos = loaded.tokenizer.bos_id(), eos = loaded.tokenizer.eos_id();
  auto id = [](int v) { return v >= 0 ? nlohmann::json(v) : nlohmann::json(); };
  const nlohmann::json config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.d_model},
      {"intermediate_size", c.d_ff},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.kv_heads()},
      {"head_dim", c.head_dim()},
      {"hidden_act", "silu"},
      {"max_position_embeddings", c.max_seq_len},
      {"rms_norm_eps", c.norm_eps},
      {"rope_theta", c.rope_theta},
      {"rope_scaling", nullptr},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"tie_word_embeddings", c.tie_embeddings},
      {"initializer_range", c.init_std},
      {"torch_dtype", torch_dtype},
      {"bos_token_id", id(bos)},
      {"eos_token_id", id(eos)},
  };
  const SpmVocab vocab = parse_spm_model(loaded.tokenizer.serialized());
  auto piece = [&](int i) {
    return i >= 0 && i < static_cast<int>(vocab.pieces.size()) ? nlohmann::json(vocab.pieces[i].piece)
                                                               : nlohmann::json();
  };
  const nlohmann::json tokenizer_config = {
      {"tokenizer_class", "LlamaTokenizer"},
      {"bos_token", piece(bos)},
      {"eos_token", piece(eos)},
      {"unk_token", piece(vocab.unk_id)},
      {"pad_token", piece(vocab.pad_id)},
      {"add_bos_token", false},  // loom trains without bos (paragraphs ended by eos)
      {"add_eos_token", false},
      {"legacy", true},  // plain SentencePiece encoding, as loom's tokenizer
      {"clean_up_tokenization_spaces", false},
      {"model_max_length", c.max_seq_len},
  };
  const nlohmann::json generation = {
      {"_from_model_config", true}, {"bos_token_id", id(bos)}, {"eos_token_id", id(eos)}};

  const fs::path out(out_dir);
  CheckpointWriter writer(out.has_parent_path() ? out.parent_path().string() : ".", out.filename().string());
  save_safetensors(writer.path("model.safetensors"), tensors, {{"format", "pt"}});  // transformers wants "pt"
  writer.add("config.json", config.dump(2) + "\n");
  writer.add("generation_config.json", generation.dump(2) + "\n");
  writer.add("tokenizer.model", loaded.tokenizer.serialized());
  writer.add("tokenizer_config.json", tokenizer_config.dump(2) + "\n");
  writer.commit();
}

ImportSummary import_checkpoint(const std::string& source, const std::string& out_dir) {
  if (fs::is_directory(source)) {
    if (!fs::exists(fs::path(source) / "config.json"))
      fail("{}: a directory without config.json is not a Hugging Face model", source);
    return import_hf(source, out_dir);
  }
  if (!fs::exists(source)) fail("{} does not exist", source);
  return import_gguf(source, out_dir);
}

}  // namespace loom
