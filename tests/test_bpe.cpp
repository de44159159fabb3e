// Byte-level BPE (data/bpe_tokenizer.h) on a tiny hand-made vocabulary: pre-tokenizer pieces as
// llama.cpp's GPT-2 matcher cuts them, merges by rank, special tokens, decoding. The real
// vocabulary is checked against llama.cpp's ids in test_smollm2.cpp.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/data/bpe_tokenizer.h"
#include "loom/data/tokenizer.h"

using loom::bpe_pretokenize;
using loom::BpeTokenizer;
using Pieces = std::vector<std::string>;

TEST(BpePretokenize, Gpt2RegexCases) {
  EXPECT_EQ(bpe_pretokenize("Hello world", "gpt2"), (Pieces{"Hello", " world"}));
  // Contractions are lower-case only; "'S" is punctuation then a letter run.
  EXPECT_EQ(bpe_pretokenize("it's HE'S we'll", "gpt2"), (Pieces{"it", "'s", " HE", "'", "S", " we", "'ll"}));
  EXPECT_EQ(bpe_pretokenize("in 2024!", "gpt2"), (Pieces{"in", " 2024", "!"}));
  // \s+(?!\S): a run of spaces leaves its last one to the next word; at the end it stays whole.
  EXPECT_EQ(bpe_pretokenize("a   b  ", "gpt2"), (Pieces{"a", "  ", " b", "  "}));
  // Only ' ' joins a word: a newline before a letter is a piece of its own.
  EXPECT_EQ(bpe_pretokenize("a\n\nb", "gpt2"), (Pieces{"a", "\n", "\n", "b"}));
  EXPECT_EQ(bpe_pretokenize("x <|y", "gpt2"), (Pieces{"x", " <|", "y"}));
  // Letters beyond ASCII; a combining accent (category M) is not a letter.
  EXPECT_EQ(bpe_pretokenize("Café 東京", "gpt2"), (Pieces{"Café", " 東京"}));
  EXPECT_EQ(bpe_pretokenize("Cafe\xCC\x81s", "gpt2"), (Pieces{"Cafe", "\xCC\x81", "s"}));
  EXPECT_EQ(bpe_pretokenize("", "gpt2"), Pieces{});
}

TEST(BpePretokenize, SmollmSplitsEveryDigit) {
  EXPECT_EQ(bpe_pretokenize("in 2024!", "smollm"), (Pieces{"in", " ", "2", "0", "2", "4", "!"}));
  // Any Unicode number (Arabic-Indic digits, superscripts) splits the same way.
  EXPECT_EQ(bpe_pretokenize("x\xD9\xA3\xD9\xA4\xC2\xB2", "smollm"), (Pieces{"x", "\xD9\xA3", "\xD9\xA4", "\xC2\xB2"}));
  EXPECT_THROW(bpe_pretokenize("x", "no-such-pre"), loom::Error);
}

namespace {

// Byte-level characters: ' ' is 'Ġ' (U+0120), '\n' is 'Ċ' (U+010A).
std::string tiny_vocab(bool add_bos) {
  nlohmann::json j;
  j["model"] = "gpt2";
  j["pre"] = "gpt2";
  j["tokens"] = {"<s>",
                 "</s>",
                 "a",
                 "b",
                 "\xC4\xA0",
                 "\xC4\x8A",
                 "ab",
                 "\xC4\xA0"
                 "ab",
                 "<",
                 ">",
                 "s",
                 "/",
                 "\xC4\xA0"
                 "a"};
  j["token_type"] = {3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  // Ranks: "a b" 0, "Ġ a" 1, "Ġ ab" 2.
  j["merges"] = {"a b", "\xC4\xA0 a", "\xC4\xA0 ab"};
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 1;
  j["add_bos_token"] = add_bos;
  return j.dump();
}

}  // namespace

TEST(BpeTokenizer, MergesByRankSpecialsAndDecode) {
  const BpeTokenizer t = BpeTokenizer::from_json(tiny_vocab(false));
  EXPECT_EQ(t.vocab_size(), 13);
  EXPECT_EQ(t.encode("ab"), (std::vector<int>{6}));
  // " ab": "a b" (rank 0) merges first, leaving "Ġ ab" (rank 2): one token.
  EXPECT_EQ(t.encode(" ab"), (std::vector<int>{7}));
  EXPECT_EQ(t.encode(" a"), (std::vector<int>{12}));
  EXPECT_EQ(t.encode("ba\n"), (std::vector<int>{3, 2, 5}));
  // Control tokens are matched in the text only when parse_special is on.
  EXPECT_EQ(t.encode("ab<s>b</s>"), (std::vector<int>{6, 0, 3, 1}));
  EXPECT_EQ(t.encode("ab<s>", /*parse_special=*/false), (std::vector<int>{6, 8, 10, 9}));
  // Control tokens decode to nothing; everything else back to its bytes.
  EXPECT_EQ(t.decode({6, 0, 7, 5, 1}), "ab ab\n");
  EXPECT_THROW(t.decode({13}), loom::Error);
  EXPECT_THROW(t.encode("c"), loom::Error);  // not in this vocabulary (a real one has all 256 bytes)
}

TEST(BpeTokenizer, LoomTokenizerHoldsABpeVocabulary) {
  const loom::Tokenizer t = loom::Tokenizer::from_bpe_json(tiny_vocab(false));
  EXPECT_EQ(t.vocab_size(), 13);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.encode("ab ab"), (std::vector<int>{6, 7}));
  EXPECT_EQ(t.decode({6, 7}), "ab ab");
  EXPECT_STREQ(t.file_name(), "tokenizer.gguf.json");
  // generate's prefix follows the GGUF's add_bos_token.
  EXPECT_EQ(t.prompt_prefix(), std::vector<int>{});
  EXPECT_EQ(loom::Tokenizer::from_bpe_json(tiny_vocab(true)).prompt_prefix(), std::vector<int>{0});
}

TEST(BpeTokenizer, RejectsOtherModelsAndBadFiles) {
  auto j = nlohmann::json::parse(tiny_vocab(false));
  j["model"] = "llama";
  EXPECT_THROW(BpeTokenizer::from_json(j.dump()), loom::Error);
  EXPECT_THROW(BpeTokenizer::from_json("{"), loom::Error);
  j = nlohmann::json::parse(tiny_vocab(false));
  j["token_type"] = {1};
  EXPECT_THROW(BpeTokenizer::from_json(j.dump()), loom::Error);
  // Found by fuzzing: fields of the wrong type or missing threw JSON's own exceptions.
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"tokens", {1, 2}},
           {"merges", 7},
           {"eos_token_id", "two"},
           {"pre", nullptr},
           {"token_type", "x"},
           // a float out of int's range: converting it was undefined behaviour (UBSan)
           {"bos_token_id", 1.11111e46},
           {"token_type", std::vector<double>(5, 1e46)}}) {
    j = nlohmann::json::parse(tiny_vocab(false));
    j[key] = value;
    EXPECT_THROW(BpeTokenizer::from_json(j.dump()), loom::Error) << key;
  }
  j = nlohmann::json::parse(tiny_vocab(false));
  j.erase("merges");
  EXPECT_THROW(BpeTokenizer::from_json(j.dump()), loom::Error);
  EXPECT_THROW(BpeTokenizer::from_json("[1, 2]"), loom::Error);
}
