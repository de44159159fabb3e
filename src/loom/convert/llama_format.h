// Interchange with the LLaMA ecosystem: export a loom LLaMA-style decoder to GGUF (llama.cpp) or
// to a Hugging Face LlamaForCausalLM directory, and import either back into a loom checkpoint.
// docs/formats.md has the tensor-name mapping and the RoPE permutation. It lives in convert/, above
// checkpoint/, because it reads and writes checkpoints (LoadedModel); io/gguf.h is the torch-free
// file format below.
//
// A "LLaMA-style" loom model: arch decoder, every layer `attention`, position rope or
// rope_adjacent, norm rmsnorm (pre), ffn swiglu, no biases, no QK-norm, no embedding scale; any
// GQA, tied or untied output. loom's fused weights are split on export: wqkv [(H + 2K) * D, d]
// rows [q; k; v] -> q, k, v; w_in [2 * d_ff, d] rows [gate; up] -> gate, up.
//
// RoPE pairing: llama.cpp's `llama` architecture rotates adjacent pairs (x_2i, x_2i+1); HF LLaMA
// rotates halves (x_i, x_i+D/2). A loom `rope` (rotate-half) model exported to GGUF has each
// head's q and k rows permuted as llama.cpp's convert_hf_to_gguf.py does; a `rope_adjacent` model
// exported to HF gets the inverse permutation. Imports keep the file's pairing: GGUF ->
// rope_adjacent, HF -> rope, so no permutation is needed on the way in.
#pragma once
#include <string>

#include "loom/checkpoint/checkpoint.h"
#include "loom/io/gguf.h"

namespace loom {

// The LLaMA architecture as a loom config, written once: decoder, every layer `attention`,
// `position` (rope or rope_adjacent: the file's RoPE pairing), rmsnorm placed pre, swiglu, no
// biases; everything else at its default. Imports start from it and set what the file carries.
ModelConfig llama_layout(const std::string& position);

// Fails (one loom::Error naming every unsupported property) unless `config` is llama_layout() up to
// what the files carry (sizes, norm_eps, rope_theta, tied output) and options without effect at
// inference (AtInference::kNoEffect).
void check_llama_style(const ModelConfig& config, const std::string& what);

// Writes a GGUF v3 file (general.architecture llama). `type`: F32, F16, BF16, Q8_0, Q4_0 or Q4_1
// for the 2-D weights (quantized types only where the row length is a multiple of 32, else F16);
// 1-D tensors (norms) are always F32. `name` goes to general.name. The vocabulary: the
// checkpoint's SentencePiece tokenizer (tokenizer.ggml.model llama), or the kGgufVocabFile a GGUF
// import kept (its tokenizer.ggml.* keys written back, so SmolLM2 -> loom -> GGUF keeps its BPE).
void export_gguf(LoadedModel& loaded, GgmlType type, const std::string& path, const std::string& name);

// Writes a Hugging Face LlamaForCausalLM directory (atomically): model.safetensors (dtype F32, F16
// or BF16), config.json, generation_config.json, tokenizer.model, tokenizer_config.json.
void export_hf(LoadedModel& loaded, const std::string& out_dir, GgmlType dtype = GgmlType::kF32);

// The file a GGUF import writes for a vocabulary loom cannot turn into a SentencePiece model
// (tokenizer.ggml.model other than "llama", e.g. SmolLM2's "gpt2" byte-level BPE): a JSON object
// holding every tokenizer.ggml.* key without its prefix ("model", "pre", "tokens", "token_type",
// "merges", "bos_token_id", "eos_token_id", ...) and "chat_template" when the file has one.
// A checkpoint with this file and no tokenizer.model loads with has_tokenizer false.
inline constexpr const char* kGgufVocabFile = kForeignVocabFile;

// What import_checkpoint wrote.
struct ImportSummary {
  std::string dir;        // the checkpoint directory
  std::string source;     // "gguf" or "hf"
  std::string tokenizer;  // "sentencepiece", kGgufVocabFile + " (<model>)", or "none"
  ModelConfig config;
  int64_t q4_0_weights = 0;  // GGUF: linear weights kept as the file's Q4_0 blocks
};

// `source`: a GGUF file (llama architecture; tensors of any type loom decodes, dequantized to
// fp32, except that a linear weight whose every part is Q4_0 keeps the file's blocks, making a
// "q4" checkpoint) or a Hugging Face LLaMA directory (config.json and model.safetensors, or shards listed
// in model.safetensors.index.json; F32/F16/BF16). Writes a loom checkpoint directory `out_dir`
// (atomically): model.safetensors, recipe.yaml (task lm), trainer.json (step 0), and the
// tokenizer: tokenizer.model (SentencePiece: rebuilt from a GGUF `llama` vocabulary, or the HF
// directory's own), else kGgufVocabFile for other GGUF vocabularies, else none.
ImportSummary import_checkpoint(const std::string& source, const std::string& out_dir);

}  // namespace loom
