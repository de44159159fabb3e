// UTF-8 validation and repair, for text that crosses a boundary where it must be valid: a model's
// sampled bytes (a byte-level BPE token can end inside a character) on their way into JSON, and
// request bodies on their way in. Torch-free.
//
// Invalid bytes are replaced as Unicode's "maximal subpart" practice says (Unicode 15, ch. 3,
// U+FFFD substitution; what WHATWG's decoder and Python's errors="replace" do): each maximal
// prefix of a well-formed sequence that cannot be completed becomes one U+FFFD.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace loom {

// The offset of the first byte that is not part of a well-formed sequence (an unfinished sequence
// at the end counts as ill-formed), or std::string_view::npos when `text` is valid UTF-8.
size_t utf8_invalid_at(std::string_view text);

// The length of `text` without a trailing unfinished sequence (one to three bytes that are a
// proper prefix of a well-formed one): what can be emitted now, since the next bytes may complete
// it. Ill-formed bytes before that are not held back.
size_t utf8_complete_prefix(std::string_view text);

// `text` with each maximal ill-formed subpart (an unfinished one at the end included) replaced by
// U+FFFD. Valid text comes back unchanged. For any x, utf8_repair(x.substr(0,
// utf8_complete_prefix(x))) is a prefix of utf8_repair(x + more): streamed text can be repaired
// piece by piece.
std::string utf8_repair(std::string_view text);

}  // namespace loom
