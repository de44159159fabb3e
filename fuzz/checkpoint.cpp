// Checkpoint loading: the input is a checkpoint directory's files joined by "\n@@FILE@@\n", in the
// order recipe.yaml, trainer.json, model.safetensors, tokenizer.model (scripts/fuzz.sh makes the
// seed from a real tiny checkpoint); load_checkpoint must load it or refuse it with a loom::Error.
#include "loom/checkpoint/checkpoint.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const char* names[] = {"recipe.yaml", "trainer.json", "model.safetensors", "tokenizer.model"};
  const std::string dir = fuzz::scratch() + "/checkpoint";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto parts = fuzz::split(std::string_view(reinterpret_cast<const char*>(data), size), "\n@@FILE@@\n");
  for (size_t i = 0; i < parts.size() && i < 4; ++i) fuzz::write(dir + "/" + names[i], parts[i]);
  fuzz::refuses_cleanly([&] { (void)loom::load_checkpoint(dir); });
  return 0;
}
