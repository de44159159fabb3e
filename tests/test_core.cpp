#include <gtest/gtest.h>

#include "loom/core/error.h"

TEST(Core, FailFormatsOneLine) {
  try {
    loom::fail("unknown key '{}' in {}", "d_modle", "x.yaml");
    FAIL() << "fail() returned";
  } catch (const loom::Error& e) {
    EXPECT_STREQ(e.what(), "unknown key 'd_modle' in x.yaml");
  }
}
