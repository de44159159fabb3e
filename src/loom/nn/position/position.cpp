// What every position scheme shares (position.h). The schemes: learned.cpp, sinusoidal.cpp,
// rope.cpp (rope, rope_adjacent), alibi.cpp, none.cpp.
#include "loom/nn/position/position.h"

#include "loom/core/error.h"

namespace loom {

void check_position_range(int64_t offset, int64_t t, int64_t max_seq_len) {
  if (offset + t > max_seq_len)
    fail("positions {}..{} exceed the model's context of {} tokens", offset, offset + t - 1, max_seq_len);
}

}  // namespace loom
