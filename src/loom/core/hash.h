// splitmix64's finalizer (Steele et al. 2014): a cheap, well-mixed 64-bit hash, used to derive
// independent generator seeds from (seed, step, micro-batch) coordinates, so batches are pure
// functions of their coordinates and resumed runs replay them.
#pragma once
#include <cstdint>

namespace loom {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace loom
