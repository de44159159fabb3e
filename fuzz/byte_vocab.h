// A byte-level BPE vocabulary (GPT-2's byte-to-code-point map, all 256 bytes, seven merges and
// ChatML's control tokens: <|endoftext|> 263, <|im_start|> 264, <|im_end|> 265), for the harnesses that need a tokenizer without a file.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace fuzz {

inline std::string byte_token(int byte) {
  auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  int code = byte;
  if (!printable(byte)) {
    code = 256;
    for (int b = 0; b < byte; ++b) code += printable(b) ? 0 : 1;
  }
  std::string utf8;
  if (code < 0x80) utf8 += static_cast<char>(code);
  else utf8 += static_cast<char>(0xC0 | (code >> 6)), utf8 += static_cast<char>(0x80 | (code & 0x3F));
  return utf8;
}

inline std::string byte_vocab_json() {
  nlohmann::json j;
  j["model"] = "gpt2";
  j["pre"] = "smollm";
  std::vector<int> types;
  for (int b = 0; b < 256; ++b) j["tokens"].push_back(byte_token(b)), types.push_back(1);
  const std::string space = byte_token(' ');
  for (const std::string& merged :
       std::vector<std::string>{"th", "the", space + "t", space + "th", space + "the", "in", "ing"})
    j["tokens"].push_back(merged), types.push_back(1);
  j["merges"] = {"t h", "th e", space + " t", space + "t h", space + "th e", "i n", "in g"};
  for (const char* control : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"})
    j["tokens"].push_back(control), types.push_back(3);
  j["token_type"] = types;
  j["bos_token_id"] = 263;
  j["eos_token_id"] = 263;
  return j.dump();
}

}  // namespace fuzz
