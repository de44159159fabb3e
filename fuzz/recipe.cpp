// The recipe parser with --set overrides: YAML, then "\n@@SET@@\n" and one key=value per line.
#include "loom/checkpoint/recipe.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split(std::string_view(reinterpret_cast<const char*>(data), size), "\n@@SET@@\n");
  std::vector<std::string> overrides;
  if (parts.size() > 1)
    for (auto line : fuzz::split(parts[1], "\n"))
      if (!line.empty()) overrides.emplace_back(line);
  loom::Recipe recipe;
  bool parsed = false;
  fuzz::refuses_cleanly([&] {
    recipe = loom::parse_recipe(std::string(parts[0]), "fuzz.yaml", overrides);
    parsed = true;
  });
  // A recipe loom accepted must read back from what it writes (every checkpoint stores one): an
  // error here escapes and is a finding.
  if (parsed) (void)loom::parse_recipe(loom::recipe_to_yaml(recipe), "fuzz.yaml (written back)");
  return 0;
}
