#include <cstdio>
#include <filesystem>

#include "loom/cli/commands.h"
#include "loom/convert/llama_format.h"

namespace loom::cli {

void add_export(CLI::App& app, const GlobalOptions&) {
  struct Args {
    std::string checkpoint, format, type, out, name;
  };
  auto args = std::make_shared<Args>();
  app.add_option("checkpoint", args->checkpoint, "checkpoint directory, or a run directory (its latest checkpoint)")
      ->required();
  app.add_option("--format", args->format, "gguf (llama.cpp) or hf (a Hugging Face LlamaForCausalLM directory)")
      ->required()
      ->check(CLI::IsMember({"gguf", "hf"}));
  app.add_option("--type", args->type,
                 "weight type: gguf f32, f16 (default), bf16, q8_0, q4_0, q4_1; hf f32 (default), f16, bf16");
  app.add_option("--name", args->name, "gguf: general.name (default: the checkpoint's directory name)");
  app.add_option("--out", args->out, "gguf: the file to write; hf: the directory to write")->required();
  app.callback([args] {
    LoadedModel loaded = load_checkpoint(args->checkpoint);
    if (args->format == "gguf") {
      const GgmlType type = ggml_type_from_name(args->type.empty() ? "f16" : args->type);
      const std::string name = args->name.empty() ? std::filesystem::path(loaded.dir).filename().string() : args->name;
      export_gguf(loaded, type, args->out, name);
      std::printf("wrote %s (GGUF llama, %s)\n", args->out.c_str(), ggml_type_info(type).name);
    } else {
      const GgmlType type = ggml_type_from_name(args->type.empty() ? "f32" : args->type);
      export_hf(loaded, args->out, type);
      std::printf("wrote %s (Hugging Face LlamaForCausalLM, %s)\n", args->out.c_str(), ggml_type_info(type).name);
    }
  });
}

}  // namespace loom::cli
