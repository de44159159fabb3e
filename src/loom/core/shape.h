// "[2, 3, 4]" for error messages and logs.
#pragma once
#include <string>

#include <c10/util/ArrayRef.h>

namespace loom {

inline std::string shape_string(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

}  // namespace loom
