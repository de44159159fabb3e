// loom as a C++ library: load a checkpoint, continue a prompt greedily, print prompt and continuation
// (what `loom generate CHECKPOINT --prompt PROMPT --temperature 0 --max-new-tokens 24` prints).
#include <cstdio>

#include "loom/checkpoint/checkpoint.h"
#include "loom/infer/generate.h"

int main(int argc, char** argv) try {
  if (argc != 3) return std::fprintf(stderr, "usage: embed CHECKPOINT PROMPT\n"), 2;
  loom::LoadedModel loaded = loom::load_checkpoint(argv[1]);
  const loom::Tokenizer& tokenizer = loaded.tokenizer;
  std::vector<int> text = tokenizer.encode(argv[2]), prefix = tokenizer.prompt_prefix();
  std::vector<int64_t> prompt(prefix.begin(), prefix.end());
  prompt.insert(prompt.end(), text.begin(), text.end());
  loom::GenerateOptions options;
  options.max_new_tokens = 24, options.sampling.temperature = 0, options.stop_token = tokenizer.eos_id();
  auto engine = loom::make_engine(loaded, {});
  for (int64_t token : loom::generate(*engine, 0, prompt, options))
    if (token != tokenizer.eos_id()) text.push_back(static_cast<int>(token));
  std::printf("%s\n", tokenizer.decode(text).c_str());
} catch (const std::exception& e) {
  std::fprintf(stderr, "embed: %s\n", e.what());
  return 1;
}
