// loom as a C++ library: load a checkpoint, continue a prompt greedily, print prompt and continuation
// (what `loom generate CHECKPOINT --prompt PROMPT --temperature 0 --max-new-tokens 24` prints).
#include <cstdio>

#include "loom/infer/generate.h"

int main(int argc, char** argv) try {
  if (argc != 3) return std::fprintf(stderr, "usage: embed CHECKPOINT PROMPT\n"), 2;
  loom::LoadedModel model = loom::load_checkpoint(argv[1]);
  loom::GenerateOptions options;
  options.max_new_tokens = 24, options.sampling.temperature = 0, options.stop_token = model.tokenizer.eos_id();
  std::printf("%s\n", loom::generate_text(model, argv[2], options).c_str());
} catch (const std::exception& e) {
  return std::fprintf(stderr, "embed: %s\n", e.what()), 1;
}
