// Checkpoints, written by training and read by everything else (inference, conversion, serving):
// a directory <run>/step-NNNNNN/ written atomically (io/checkpoint_dir.h) with
//   model.safetensors      the weights (parameter names are the file format)
//   optimizer.safetensors  AdamW moments, named "<param>.exp_avg" / "<param>.exp_avg_sq"
//   recipe.yaml            the resolved recipe the run used
//   tokenizer.model        the SentencePiece model (task lm; generated tasks have fixed vocabularies)
//   tokenizer.gguf.json    instead of tokenizer.model: an imported model's byte-level BPE vocabulary
//   trainer.json           step, tokens seen, elapsed time, last validation loss, format
#pragma once
#include <optional>
#include <string>

#include "loom/checkpoint/recipe.h"
#include "loom/data/tokenizer.h"
#include "loom/io/safetensors.h"
#include "loom/models/model.h"
#include "loom/quant/quantize.h"

namespace loom {

inline constexpr int kCheckpointFormat = 1;

// A checkpoint imported from GGUF whose vocabulary is not SentencePiece (tokenizer.ggml.model
// "gpt2", ...) holds it here as JSON instead of tokenizer.model (convert/llama_format.h has the
// format). A "gpt2" vocabulary loads as a byte-level BPE Tokenizer (data/bpe_tokenizer.h); any
// other kind loads with has_tokenizer false.
inline constexpr const char* kForeignVocabFile = "tokenizer.gguf.json";

struct TrainerState {
  int64_t step = 0;  // optimizer steps completed
  int64_t tokens_seen = 0;
  double elapsed_seconds = 0;
  double valid_loss = std::nan("");
  // Divergence rollbacks (train.on_divergence): step s trains on batch s + data_offset (the
  // batches skipped so far), at lr_scale times the scheduled learning rate.
  int64_t data_offset = 0;
  double lr_scale = 1;
  int64_t rollbacks = 0;
  // The running mean of the training loss that spikes are measured against, over loss_steps steps.
  double loss_mean = 0;
  int64_t loss_steps = 0;
};

// Writes <run_dir>/step-NNNNNN atomically and keeps the newest keep_last. Returns its path.
// optimizer_state: the optimizer's named tensors (AdamW::state(), train/adamw.h), written as
// optimizer.safetensors with the step in its metadata.
std::string save_checkpoint(const std::string& run_dir, const Recipe& recipe, Model& model, const Tokenizer* tokenizer,
                            const NamedTensors& optimizer_state, const TrainerState& state, int64_t keep_last);

// A model ready for inference. `path` is a checkpoint directory or a run directory (its newest
// checkpoint). Every problem (missing file, corrupt weights, wrong shapes) is one loom::Error.
struct LoadedModel {
  std::string dir;
  Recipe recipe;
  Model model{nullptr};
  Tokenizer tokenizer;  // empty for generated tasks and non-gpt2 kForeignVocabFile imports (has_tokenizer false)
  bool has_tokenizer = false;
  TrainerState state;
  // Quantized checkpoints (`loom quantize`): the method ("int8", "q4", "gptq"; empty for float
  // checkpoints) and the stored quantized weights by parameter name. `model` holds their
  // dequantized values, so everything that runs a Model runs the quantized model.
  std::string quantization;
  std::map<std::string, QuantizedLinear> quantized;
};
LoadedModel load_checkpoint(const std::string& path);
// Fails, naming the checkpoint and its task, unless it has a text tokenizer (`what` says who needs it).
void require_tokenizer(const LoadedModel& loaded, const std::string& what);

// Writes the element-wise mean of the checkpoints' weights (accumulated in fp64) as a checkpoint
// directory `out_dir` (atomically), with the last one's recipe, tokenizer and trainer state and no
// optimizer state (fairseq's scripts/average_checkpoints.py). The checkpoints must hold the same
// tensors and the same model recipe. Returns out_dir.
std::string average_checkpoints(const std::vector<std::string>& checkpoints, const std::string& out_dir);

}  // namespace loom
