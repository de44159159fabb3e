#include "loom/checkpoint/checkpoint.h"

#include <filesystem>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/io/safetensors.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

// An integer field: JSON's own conversion of a float out of range is undefined behaviour.
int64_t whole(const nlohmann::json& j, const char* key, const std::string& path,
              std::optional<int64_t> fallback = std::nullopt) {
  if (fallback && !j.contains(key)) return *fallback;
  const auto& v = j.at(key);
  if (!v.is_number_integer()) fail("{}: corrupt trainer state ('{}' is not an integer)", path, key);
  return v.get<int64_t>();
}

TrainerState parse_state(const std::string& path) {
  const std::string text = read_file(path);
  try {
    const auto j = nlohmann::json::parse(text);
    if (whole(j, "format", path) != kCheckpointFormat)
      fail("{}: checkpoint format {} is not supported (this loom reads {})", path, whole(j, "format", path),
           kCheckpointFormat);
    TrainerState state;
    state.step = whole(j, "step", path);
    state.tokens_seen = whole(j, "tokens_seen", path);
    state.elapsed_seconds = j.at("elapsed_seconds").get<double>();
    if (!j.at("valid_loss").is_null()) state.valid_loss = j.at("valid_loss").get<double>();
    // Written since divergence rollbacks exist; older checkpoints have none and made none.
    state.data_offset = whole(j, "data_offset", path, 0);
    state.lr_scale = j.value("lr_scale", 1.0);
    state.rollbacks = whole(j, "rollbacks", path, 0);
    state.loss_mean = j.value("loss_mean", 0.0);
    state.loss_steps = whole(j, "loss_steps", path, 0);
    return state;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: corrupt trainer state ({})", path, e.what());
  }
}

// tokenizer.ggml.model of an imported GGUF vocabulary ("gpt2", "bert", ...).
std::string foreign_vocab_model(const std::string& path) {
  try {
    return nlohmann::json::parse(read_file(path)).value("model", std::string());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: corrupt vocabulary ({})", path, e.what());
  }
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const Recipe& recipe, Model& model, const Tokenizer* tokenizer,
                            const NamedTensors& optimizer_state, const TrainerState& state, int64_t keep_last) {
  CheckpointWriter writer(run_dir, fmt::format("step-{:06d}", state.step));
  const std::map<std::string, std::string> metadata{{"format", "loom-" + std::to_string(kCheckpointFormat)},
                                                    {"step", std::to_string(state.step)}};
  save_safetensors(writer.path("model.safetensors"), module_state(*model), metadata);
  save_safetensors(writer.path("optimizer.safetensors"), optimizer_state, metadata);
  writer.add("recipe.yaml", recipe_to_yaml(recipe));
  if (tokenizer != nullptr) writer.add(tokenizer->file_name(), tokenizer->serialized());
  nlohmann::json j{{"format", kCheckpointFormat},
                   {"step", state.step},
                   {"tokens_seen", state.tokens_seen},
                   {"elapsed_seconds", state.elapsed_seconds},
                   {"valid_loss", std::isnan(state.valid_loss) ? nlohmann::json() : nlohmann::json(state.valid_loss)},
                   {"data_offset", state.data_offset},
                   {"lr_scale", state.lr_scale},
                   {"rollbacks", state.rollbacks},
                   {"loss_mean", state.loss_mean},
                   {"loss_steps", state.loss_steps}};
  writer.add("trainer.json", j.dump(2) + "\n");
  const std::string dir = writer.commit();
  prune_checkpoints(run_dir, static_cast<int>(keep_last));
  return dir;
}

LoadedModel load_checkpoint(const std::string& path) {
  LoadedModel loaded;
  loaded.dir = resolve_checkpoint(path);
  const std::string recipe_path = (fs::path(loaded.dir) / "recipe.yaml").string();
  loaded.recipe = parse_recipe(read_file(recipe_path), recipe_path);
  loaded.state = parse_state((fs::path(loaded.dir) / "trainer.json").string());
  // An imported checkpoint may carry a GGUF vocabulary instead of a SentencePiece model
  // (kForeignVocabFile): a byte-level BPE ("gpt2", e.g. SmolLM2's) runs as loom's BpeTokenizer;
  // any other kind loads without a tokenizer.
  const fs::path spm = fs::path(loaded.dir) / "tokenizer.model", foreign = fs::path(loaded.dir) / kForeignVocabFile;
  const bool bpe = !fs::exists(spm) && fs::exists(foreign) && foreign_vocab_model(foreign.string()) == "gpt2";
  loaded.has_tokenizer = !loaded.recipe.task.is_generated() && (fs::exists(spm) || bpe || !fs::exists(foreign));
  if (loaded.has_tokenizer) {
    loaded.tokenizer = Tokenizer::load((bpe ? foreign : spm).string());
    if (loaded.tokenizer.vocab_size() != loaded.recipe.model.vocab_size)
      fail("{}: the tokenizer has {} tokens but the model's vocab_size is {}", loaded.dir,
           loaded.tokenizer.vocab_size(), loaded.recipe.model.vocab_size);
  }
  loaded.model = Model(loaded.recipe.model);
  const std::string weights = (fs::path(loaded.dir) / "model.safetensors").string();
  auto file = load_safetensors(weights);
  loaded.quantized = extract_quantized(file.tensors, weights);
  if (!loaded.quantized.empty()) {
    auto it = file.metadata.find("quantization");
    loaded.quantization = it != file.metadata.end() ? it->second : "unknown";
  }
  load_module_state(*loaded.model, file, weights);
  loaded.model->eval();
  return loaded;
}

void require_tokenizer(const LoadedModel& loaded, const std::string& what) {
  if (!loaded.has_tokenizer && fs::exists(fs::path(loaded.dir) / kForeignVocabFile))
    fail(
        "{}: {} needs a tokenizer, but this checkpoint's vocabulary ({}, imported from GGUF) is "
        "'{}', neither a SentencePiece model nor a byte-level BPE ('gpt2'): loom cannot run it yet",
        loaded.dir, what, kForeignVocabFile, foreign_vocab_model((fs::path(loaded.dir) / kForeignVocabFile).string()));
  if (!loaded.has_tokenizer)
    fail(
        "{}: {} needs text, but this model learned the generated task '{}' (no tokenizer); score it with "
        "`loom eval {}`",
        loaded.dir, what, loaded.recipe.task.name, loaded.dir);
}

std::string average_checkpoints(const std::vector<std::string>& checkpoints, const std::string& out_dir) {
  if (checkpoints.empty()) fail("average: no checkpoints given");
  NamedTensors sum;                     // fp64 running sums, in the first checkpoint's order
  std::map<std::string, size_t> index;  // name -> position in sum
  std::vector<at::ScalarType> dtypes;
  std::string first_model_yaml, last_dir;
  std::vector<std::string> dirs;
  for (const auto& path : checkpoints) {
    const std::string dir = resolve_checkpoint(path);
    const std::string recipe_path = (fs::path(dir) / "recipe.yaml").string();
    const std::string model_yaml = config_to_yaml(parse_recipe(read_file(recipe_path), recipe_path).model);
    if (dirs.empty()) first_model_yaml = model_yaml;
    else if (model_yaml != first_model_yaml)
      fail("average: {} has a different model recipe than {}", dir, dirs.front());
    const std::string weights = (fs::path(dir) / "model.safetensors").string();
    auto file = load_safetensors(weights);
    if (!dirs.empty() && file.tensors.size() != sum.size())
      fail("average: {} holds {} tensors, {} holds {}", weights, file.tensors.size(), dirs.front(), sum.size());
    for (auto& [name, tensor] : file.tensors) {
      if (file.metadata.count("quantization"))
        fail("average: {} is a quantized checkpoint; average the float checkpoints, then quantize", dir);
      if (dirs.empty()) {
        index[name] = sum.size();
        sum.emplace_back(name, tensor.to(torch::kDouble));
        dtypes.push_back(tensor.scalar_type());
        continue;
      }
      auto it = index.find(name);
      if (it == index.end() || !sum[it->second].second.sizes().equals(tensor.sizes()))
        fail("average: tensor '{}' of {} is missing from or shaped differently in {}", name, weights, dirs.front());
      sum[it->second].second.add_(tensor.to(torch::kDouble));
    }
    dirs.push_back(dir);
    last_dir = dir;
  }
  for (size_t i = 0; i < sum.size(); ++i)
    sum[i].second = sum[i].second.div_(static_cast<double>(dirs.size())).to(dtypes[i]);
  const fs::path out(out_dir);
  CheckpointWriter writer(out.has_parent_path() ? out.parent_path().string() : ".", out.filename().string());
  const TrainerState state = parse_state((fs::path(last_dir) / "trainer.json").string());
  save_safetensors(writer.path("model.safetensors"), sum,
                   {{"format", "loom-" + std::to_string(kCheckpointFormat)},
                    {"step", std::to_string(state.step)},
                    {"averaged", std::to_string(dirs.size())}});
  writer.add("recipe.yaml", read_file((fs::path(last_dir) / "recipe.yaml").string()));
  for (const char* name : {"tokenizer.model", "tokenizer.gguf.json"})
    if (fs::exists(fs::path(last_dir) / name)) writer.add(name, read_file((fs::path(last_dir) / name).string()));
  nlohmann::json j{{"format", kCheckpointFormat},
                   {"step", state.step},
                   {"tokens_seen", state.tokens_seen},
                   {"elapsed_seconds", state.elapsed_seconds},
                   {"valid_loss", nullptr},
                   {"averaged_from", dirs}};
  writer.add("trainer.json", j.dump(2) + "\n");
  return writer.commit();
}

}  // namespace loom
