// The safetensors reader (it reads a path: the input is written to a scratch file first).
#include "loom/io/safetensors.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::scratch() + "/input.safetensors";
  fuzz::write(path, std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::refuses_cleanly([&] { (void)loom::load_safetensors(path); });
  return 0;
}
