// The GGUF reader: parse, then decode every tensor it accepted.
#include "loom/io/gguf.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::refuses_cleanly([&] {
    const loom::GgufFile file = loom::parse_gguf(std::string(reinterpret_cast<const char*>(data), size), "fuzz.gguf");
    for (const auto& t : file.tensors)
      if (t.numel() <= (int64_t{1} << 20)) fuzz::refuses_cleanly([&] { (void)file.dequantize(t); });
  });
  return 0;
}
